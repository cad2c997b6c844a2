"""Processors: the work of each action, one module an action, all with one signature.

    def process(work: Work) -> Iterable[dict]

A processor yields entries, ``{"image": ..., "result": {...}}`` or ``{"image": ..., "error": "one
sentence"}``: one per image, in order, for a per-image action (size, resize, classify); exactly one,
named after what the user named, for an action over all the images at once (plot). The actions
table (imagejobs/actions.py) says which. A problem with one image is that entry's error and never
stops the others; raising ImageJobError fails the whole job with its sentence.

A processor never touches RQ: tasks.py runs it for a single job, a chunk of a batch or a whole job,
and stores what it yields. Heavy libraries (matplotlib, the classifier's) are imported inside the
processor that needs them, so the API, which reads the actions table, never loads them.
"""

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from rq.timeouts import JobTimeoutException

import Image
from imagejobs import downloads, paths
from imagejobs.config import Settings

log = logging.getLogger(__name__)


class ImageJobError(Exception):
    """The job as a whole cannot be done; str() is the user's sentence."""


# Problems with the input itself: each becomes that image's error sentence, and is never retried.
USER_ERRORS = (Image.ImageError, downloads.DownloadError, paths.PathRefused, paths.PathNotFound, ImageJobError)


@dataclass(frozen=True)
class Work:
    """What a processor is given: the images of one job (or of one chunk of a batch) and how to treat them."""

    images: Sequence[str]  # paths relative to the images root, or http(s) URLs
    params: dict  # the action's parameters, as the API validated them (defaults left out)
    named: str  # what the user named: a path, a folder, "3 uploaded files"
    job_id: str  # the job the user sees (a batch's, for its chunks): downloads and files are kept under it
    settings: Settings
    redis: Redis
    client: str = "anonymous"  # whose work it is: remembered results are the client's own (reuse.py)
    folders: set = field(default_factory=set)  # output folders already made and checked for this work

    def folder(self, path: Path) -> Path:
        """An output folder inside the root, made (and checked: no link on the way leads out) once per work."""
        if path not in self.folders:
            paths.make_folder(self.settings.images_root, path)
            self.folders.add(path)
        return path

    def locate(self, image: str) -> Path:
        """The file an image names: a path under the root (checked again: the job's arguments came through
        Redis), or a URL, downloaded now into <root>/downloads/<jobId>/<a folder of the URL's own>/, so two
        URLs whose files have the same name never overwrite each other."""
        settings = self.settings
        root = settings.images_root
        if not downloads.is_url(image):
            return paths.resolve(root, image)
        folder = paths.download_folder(root, self.job_id) / hashlib.sha256(image.encode()).hexdigest()[:16]
        return downloads.download(
            image,
            self.folder(folder),
            max_bytes=settings.max_download_mb * 1024 * 1024,
            max_pixels=settings.max_image_pixels,
            connect_timeout=settings.url_connect_timeout,
            read_timeout=settings.url_read_timeout,
            total_timeout=settings.url_total_timeout,
            max_redirects=settings.url_max_redirects,
            allowed_networks=settings.url_networks,
        )


def outcome(image: str, work: Callable[..., Any], *args) -> dict:
    """{"image", "result": work(*args)} or {"image", "error"}: one image's outcome, whatever went wrong."""
    try:
        return {"image": image, "result": work(*args)}
    except USER_ERRORS as exc:
        return {"image": image, "error": str(exc)}
    except JobTimeoutException:  # the job's time is up: that ends the job, not just this image
        raise
    except Exception as exc:  # one image's surprise must not fail the rest of its batch
        log.exception("unexpected error on image %s", image)
        return {
            "image": image,
            "error": f"Unexpected {type(exc).__name__} while processing this image; the worker log has details.",
        }


def each_image(work: Work, operation: Callable[[Path], Any]):
    """The entries of a per-image action whose operation takes one image's file."""
    for image in work.images:
        yield outcome(image, lambda name: operation(work.locate(name)), image)

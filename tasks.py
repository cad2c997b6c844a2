"""The RQ job functions: what a worker runs. Each job names its action; the per-image work is in Image.py.

Job kinds:
  run_single(action, image, params)                    one image; its result is the job's result
  run_chunk(batch_id, action, chunk, offset, images, params)
                                                       part of a batch; entries go to the batch record
  finish_batch(batch_id, images)                       the batch's own job: gathers every entry

A per-image problem becomes that image's error entry and never stops the other images; a single-image
job with a bad image fails with that sentence, without retries (a bad image stays bad).
"""
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from redis import Redis
from rq import Queue, get_current_job
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.exceptions import AbandonedJobError

import Image
import batches
import downloads
import files
import paths
import plots
from RedisConfig import SERIALIZER
from config import settings

log = logging.getLogger(__name__)


class ImageJobError(Exception):
    """The job's one image could not be processed; str() is the user's sentence."""


# Problems with the input itself: each becomes that image's error sentence, and is never retried.
USER_ERRORS = (Image.ImageError, downloads.DownloadError, paths.PathRefused, paths.PathNotFound)


def local_path(image: str) -> Path:
    """The file an image names: a path under the root (checked again: the job's arguments came through
    Redis), or a URL, downloaded now into <root>/downloads/<jobId>/."""
    if not image.startswith(("http://", "https://")):
        return paths.resolve(settings.images_root, image)
    job = get_current_job()
    return downloads.download(
        image, paths.download_folder(settings.images_root, job.meta.get("batch", job.id)),
        max_bytes=settings.max_download_mb * 1024 * 1024, max_pixels=settings.max_image_pixels,
        connect_timeout=settings.url_connect_timeout, read_timeout=settings.url_read_timeout,
        total_timeout=settings.url_total_timeout, max_redirects=settings.url_max_redirects,
        allowed_networks=settings.url_networks)


def entry(image: str, work: Callable) -> dict:
    """{"image", "result"} or {"image", "error"}: one image's outcome, whatever went wrong."""
    try:
        return {"image": image, "result": work(local_path(image))}
    except USER_ERRORS as exc:
        return {"image": image, "error": str(exc)}
    except JobTimeoutException:  # the job's time is up: that ends the job, not just this image
        raise
    except Exception as exc:  # one image's surprise must not fail the rest of its batch
        log.exception("unexpected error on image %s", image)
        return {"image": image, "error": f"Unexpected {type(exc).__name__} while processing this image; the worker log has details."}


def size_images(images: list[str], params: dict) -> Iterator[dict]:
    for image in images:
        yield entry(image, lambda path: Image.read_size(path, settings.max_image_pixels))


def resize_images(images: list[str], params: dict) -> Iterator[dict]:
    for image in images:
        yield entry(image, lambda path: _resize(path, params))


def _resize(path: Path, params: dict) -> dict:
    source = Image.read_size(path, settings.max_image_pixels)
    extension = Image.output_extension(source["format"], params.get("format"))
    dest = paths.thumbnail_path(settings.images_root, paths.relative(settings.images_root, path), extension)
    written = Image.make_thumbnail(
        path, dest, params.get("width", 100), params.get("height", 100), params.get("fit", "contain"),
        params.get("format"), settings.max_image_pixels,
    )
    return {"path": str(dest), **written}


def plot_images(images: list[str], params: dict, named: str) -> dict:
    """A chart of the images, kept in Redis with the job; the result points at it."""
    if params["kind"] == "histogram":
        png = plots.histogram_png(named, Image.histogram(local_path(images[0]), settings.max_image_pixels))
    else:
        entries = list(size_images(images, {}))
        sizes = [entry["result"] for entry in entries if "result" in entry]
        if not sizes:
            raise ImageJobError(f"None of the {len(entries)} files in {named} could be read as an image, so there is nothing to plot.")
        png = plots.sizes_png(named, sizes, unreadable=len(entries) - len(sizes))
    job = get_current_job()
    files.save(job.connection, job.id, png, "image/png", settings.result_ttl)
    return {"plot": f"/result/file?jobId={job.id}"}


# Each action's processor, by import path: a worker imports only the ones it runs, so the
# size/resize workers never import the classifier's TensorFlow.
PROCESSORS = {
    "size": "tasks.size_images",
    "resize": "tasks.resize_images",
    "plot": "tasks.plot_images",
    "classify": "classify_tasks.classify_images",
}


def processor(action: str) -> Callable[[list[str], dict], Iterable[dict]]:
    module, _, name = PROCESSORS[action].rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_single(action: str, image: str, params: dict) -> dict:
    started = time.perf_counter()
    entry = next(iter(processor(action)([image], params)))
    log.info("%s %s in %.1f ms%s", action, image, 1000 * (time.perf_counter() - started), " (failed)" if "error" in entry else "")
    if "error" in entry:
        raise ImageJobError(f"{image}: {entry['error']}")
    return entry["result"]


def run_whole(action: str, images: list[str], params: dict, named: str) -> dict:
    """An action over all the images at once; a bad image here fails the job with its sentence."""
    started = time.perf_counter()
    try:
        result = processor(action)(images, params, named)
    except USER_ERRORS as exc:
        raise ImageJobError(f"{named}: {exc}") from None
    log.info("%s of %s (%d images) in %.1f ms", action, named, len(images), 1000 * (time.perf_counter() - started))
    return result


def run_chunk(batch_id: str, action: str, chunk: int, offset: int, images: list[str], params: dict) -> dict:
    redis = _redis()
    batches.mark_started(redis, batch_id)
    started = time.perf_counter()
    failed = 0
    for index, entry in enumerate(processor(action)(images, params), start=offset):
        batches.record(redis, batch_id, index, entry)
        failed += "error" in entry
    log.info("%s chunk %d of batch %s: %d images, %d failed, in %.1f ms",
             action, chunk, batch_id, len(images), failed, 1000 * (time.perf_counter() - started))
    _end_chunk(redis, batch_id, chunk)
    return {"images": len(images), "failed": failed}


def finish_batch(batch_id: str, images: list[str]) -> dict:
    """The batch job's result: one entry per image, in the order they were listed. Idempotent."""
    redis = _redis()
    entries = batches.collect(redis, batch_id, images)
    failed = sum("error" in entry for entry in entries)
    batches.expire(redis, batch_id, settings.result_ttl)
    log.info("batch %s finished: %d images, %d failed", batch_id, len(entries), failed)
    return {"total": len(entries), "done": len(entries) - failed, "failed": failed, "images": entries}


def _end_chunk(redis: Redis, batch_id: str, chunk: int) -> None:
    """Count the chunk as ended; the chunk that ends the batch enqueues the batch's own job."""
    if not batches.end_chunk(redis, batch_id, chunk):
        return
    batch_job = Job.fetch(batch_id, connection=redis, serializer=SERIALIZER)
    if batch_job.get_status() == JobStatus.CREATED:
        Queue(batch_job.origin, connection=redis, serializer=SERIALIZER).enqueue_job(batch_job)


def on_failure(job: Job, redis: Redis, exc_type, exc_value, traceback) -> None:
    """RQ calls this when a job raises, times out or is abandoned by a dead worker.

    It stores the user's sentence in job.meta["error"]. A bad image is not retried; anything else is,
    while retries remain. Once a chunk fails for good, it still counts as ended, so its batch finishes
    with an error entry for each image it held.
    """
    if exc_type is ImageJobError:
        job.retries_left = 0
    if job.should_retry:
        log.warning("job %s failed (%s); retrying, %d retries left", job.id, exc_type.__name__, job.retries_left)
        return
    job.meta["error"] = failure_sentence(job, exc_type, exc_value)
    job.save_meta()
    if job.meta.get("kind") == "chunk":
        _end_chunk(redis, job.meta["batch"], job.meta["chunk"])


def failure_sentence(job: Job, exc_type, exc_value) -> str:
    if exc_type is ImageJobError:
        return str(exc_value)
    if issubclass(exc_type, JobTimeoutException):
        return f"The job ran longer than its limit of {job.timeout} seconds (JOB_TIMEOUT) and was stopped; raise the limit or send fewer or smaller images."
    if issubclass(exc_type, AbandonedJobError):
        return "The worker running this job stopped before it finished, and retries ran out; submit it again."
    return f"The job failed unexpectedly ({exc_type.__name__}); the worker log has details under job {job.id}."


def _redis() -> Redis:
    return get_current_job().connection


TASKS = frozenset({"tasks.run_single", "tasks.run_chunk", "tasks.run_whole", "tasks.finish_batch"})


class UntrustedJob(Exception):
    pass


class TrustedJob(Job):
    """A job that can run only this service's own task functions and failure callback.

    JSON jobs already keep a pickle from running code in a worker; but a JSON job still names its
    function by import path, so whoever can write to Redis could name `os.system`. The workers use
    this class, so such a job fails instead of running.
    """

    @property
    def func(self):
        if self.func_name not in TASKS:
            raise UntrustedJob(f"The job names {self.func_name!r}, which is not a task of this service; refused.")
        return super().func

    @property
    def failure_callback(self):
        return on_failure if self._failure_callback_name == "tasks.on_failure" else None

    @property
    def success_callback(self):
        return None

    @property
    def stopped_callback(self):
        return None

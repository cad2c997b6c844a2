"""resize: a thumbnail of each image, written under <root>/resized/ in a folder named like its source's."""

from pathlib import Path

import Image
from imagejobs import paths
from imagejobs.processors import Work, each_image


def process(work: Work):
    yield from each_image(work, lambda path: thumbnail(work, path))


def thumbnail(work: Work, path: Path) -> dict:
    """The thumbnail of one image. Its name depends on the output's format, which Image.make_thumbnail
    learns as it opens the source: it asks for the destination then, so the source is opened once."""
    root, params = work.settings.images_root, work.params
    made = {}

    def destination(extension: str) -> Path:
        made["path"] = paths.thumbnail_path(root, paths.relative(root, path), extension)
        work.folder(made["path"].parent)  # refused if a link on the way leads out of the root
        return made["path"]

    written = Image.make_thumbnail(
        path,
        destination,
        params.get("width", 100),
        params.get("height", 100),
        params.get("fit", "contain"),
        params.get("format"),
        work.settings.max_image_pixels,
        max_decode_bytes=work.settings.max_decode_bytes,
    )
    return {"path": paths.relative(root, made["path"]), **written}  # a path a client can use: under the root

"""resize: a thumbnail of each image, written under <root>/resized/ in a folder named like its source's."""

from pathlib import Path

import Image
from imagejobs import paths
from imagejobs.processors import Work, each_image


def process(work: Work):
    yield from each_image(work, lambda path: thumbnail(work, path))


def thumbnail(work: Work, path: Path) -> dict:
    root, params, max_pixels = work.settings.images_root, work.params, work.settings.max_image_pixels
    source = Image.read_size(path, max_pixels)
    extension = Image.output_extension(source["format"], params.get("format"))
    dest = paths.thumbnail_path(root, paths.relative(root, path), extension)
    paths.make_folder(root, dest.parent)  # refused if a link on the way leads out of the root
    written = Image.make_thumbnail(
        path,
        dest,
        params.get("width", 100),
        params.get("height", 100),
        params.get("fit", "contain"),
        params.get("format"),
        max_pixels,
        max_decode_bytes=work.settings.max_decode_bytes,
    )
    return {"path": paths.relative(root, dest), **written}  # a path a client can use: under the images root

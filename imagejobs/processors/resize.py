"""resize: a thumbnail of each image, written under <root>/resized/ in a folder named like its source's."""

import os
from pathlib import Path

import Image
from imagejobs import paths
from imagejobs.processors import Work, each_image


def process(work: Work):
    yield from each_image(work, lambda path: thumbnail(work, path))


def thumbnail(work: Work, path: Path) -> dict:
    """The thumbnail of one image. Its name depends on the output's format, which Image.make_thumbnail
    learns as it opens the source: it asks for the destination then, so the source is opened once. It is
    written in a descriptor of its folder (paths.open_folder), so no link swapped in on the way can send
    it out of the root."""
    root, params = work.settings.images_root, work.params
    made = {}

    def destination(extension: str) -> tuple[int, str]:
        made["path"] = paths.thumbnail_path(root, paths.relative(root, path), extension)
        made["folder"] = paths.open_folder(root, made["path"].parent)  # refused if a link leads out of the root
        return made["folder"], made["path"].name

    try:
        written = Image.make_thumbnail(
            path,
            destination,
            params.get("width", 100),
            params.get("height", 100),
            params.get("fit", "contain"),
            params.get("format"),
            work.settings.max_image_pixels,
            max_decode_bytes=work.settings.max_decode_bytes,
            frames=params.get("frames", "all"),
            max_frames=work.settings.max_frames,
            placeholder=True,
            gravity=params.get("gravity", "center"),
            focus=focus_point(params.get("focus")),
        )
    finally:
        if "folder" in made:
            os.close(made["folder"])
    return {"path": paths.relative(root, made["path"]), **written}  # a path a client can use: under the root


def focus_point(focus: str | None) -> tuple[float, float] | None:
    """The focus parameter ("x,y", checked by ResizeParams) as a pair of fractions."""
    return None if focus is None else tuple(float(part) for part in focus.split(","))

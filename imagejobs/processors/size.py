"""size: each image's width, height, format and mode, read from its header alone."""

import Image
from imagejobs.processors import Work, each_image


def process(work: Work):
    settings = work.settings
    yield from each_image(
        work, lambda path: Image.read_size(path, settings.max_image_pixels, max_decode_bytes=settings.max_decode_bytes)
    )

"""size: each image's width, height, format and mode, read from its header alone."""

import Image
from imagejobs.processors import Work, each_image


def process(work: Work):
    yield from each_image(work, lambda path: Image.read_size(path, work.settings.max_image_pixels))

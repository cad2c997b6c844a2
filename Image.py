"""Image operations for the job service, on Pillow: header-only size reading and thumbnails.

Pure functions: paths, limits and sizes all come in as arguments (no Redis, Flask or
configuration here). Every problem with an image is raised as ImageError, whose message
is one sentence for the user that never contains a file path.
"""

import contextlib
import math
import os
import re
import stat
import struct
import warnings

from PIL import ExifTags, Image, ImageOps


class ImageError(Exception):
    """A problem with one image. str(exc) is ONE sentence a user can act on. It never contains a file path."""


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
FORMATS = ("jpeg", "png", "webp")
FITS = ("contain", "cover", "stretch")
DEFAULT_MAX_PIXELS = 50_000_000

# The decoders Image.open may try: the formats IMAGE_EXTENSIONS stands for, nothing more
# (so an upload is never handed to, say, the EPS plugin, which runs Ghostscript).
_DECODERS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_NOT_AN_IMAGE = "The file is not an image Pillow can read (JPEG, PNG, WebP, GIF, BMP or TIFF)."
_CORRUPT = "The image data is truncated or corrupt."
# What Pillow raises for bad bytes, in Image.open or while decoding. OSError with an errno
# set is the operating system failing to read the file instead (see _read_error).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_SOURCE_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}  # MPO: camera JPEG
_PILLOW_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}
# Tuned for speed: no JPEG optimize pass, WebP's fastest method.
_SAVE_OPTIONS = {"jpeg": {"quality": 85}, "png": {}, "webp": {"quality": 80, "method": 0}}
# Decode and reduce() down to at least this many times the output size, then resample
# (Pillow's own default for thumbnail(); visually the same as resampling the full image).
_REDUCING_GAP = 2.0
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees


def read_size(path, max_pixels: int) -> dict:
    """{"width", "height", "format", "mode"} from the header only (pixels are never decoded).

    format is Pillow's name, e.g. "JPEG". The size is the stored one, before any EXIF rotation.
    """
    with _opened(path, max_pixels) as img:
        return {"width": img.width, "height": img.height, "format": img.format, "mode": img.mode}


def output_extension(src_format, fmt) -> str:
    """The extension (".jpg", ".png" or ".webp") of what make_thumbnail writes for these arguments.

    src_format is Pillow's name of the source's format (read_size()["format"]) or None if unknown.
    """
    return _EXTENSIONS[_output_format(src_format, fmt)]


def make_thumbnail(src, dest, width=100, height=100, fit="contain", fmt=None, max_pixels=DEFAULT_MAX_PIXELS) -> dict:
    """Write a thumbnail of src to dest atomically; return {"width", "height", "format"} of what was written.

    fit: "contain" keeps the aspect ratio inside width x height and never upscales; "cover"
    fills exactly width x height, cropping the centre; "stretch" fills it ignoring the aspect.
    fmt: one of FORMATS, or None for the source's format if it is one of them, else png.
    Only the first frame of an animation is used. The output keeps the pixels, alpha (png,
    webp; jpeg gets a white background) and an RGB source's ICC profile; no other metadata.
    Raises ValueError for arguments outside these choices and ImageError for a bad image.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    if not (width >= 1 and height >= 1):
        raise ValueError(f"width and height must be at least 1, not {width}x{height}")
    with _opened(src, max_pixels) as img:
        out_format = _output_format(img.format, fmt)
        icc_profile = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA") else None
        thumb = _thumbnail(img, (width, height), fit)
        if out_format == "jpeg":
            thumb = _flatten(thumb)
        thumb.info.clear()  # save() falls back on info: no EXIF/GPS, comments or stale keys
        _write_atomically(thumb, dest, out_format, icc_profile)
        return {"width": thumb.width, "height": thumb.height, "format": _PILLOW_NAMES[out_format]}


def open_rgb(path, max_pixels: int, min_side: int) -> Image.Image:
    """The first frame of path decoded as an upright (EXIF-transposed) RGB image, fully loaded and
    detached from the file.

    A JPEG is decoded reduced (draft) as far as keeps its short side at least min_side (or
    whole, if it is smaller than that already). Alpha is flattened onto white and 16-bit or
    float images are scaled into 8 bits, as for thumbnails. Raises ImageError for a bad image.
    """
    with _opened(path, max_pixels) as img:
        try:
            short = min(img.size)
            if short > min_side:
                scale = min_side / short
                img.draft(None, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            ImageOps.exif_transpose(img, in_place=True)
            return _flatten(_to_8bit(img)).convert("RGB")  # convert() always returns a loaded copy
        except _DECODE_ERRORS as exc:
            raise _read_error(exc, _CORRUPT) from None


def _output_format(src_format, fmt):
    if fmt is None:
        return _SOURCE_FORMATS.get((src_format or "").upper(), "png")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be None or one of {FORMATS}, not {fmt!r}")
    return fmt


@contextlib.contextmanager
def _opened(path, max_pixels):
    """Yield path opened lazily (header parsed, no pixels decoded), once known to be within max_pixels.

    The limit that applies is max_pixels, so Pillow's DecompressionBombWarning is silenced;
    its DecompressionBombError (above twice PIL.Image.MAX_IMAGE_PIXELS, raised inside
    Image.open, before our own check can run, or while decoding a frame) becomes ImageError.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path) as img:
                pixels = img.width * img.height
                if pixels > max_pixels:
                    raise _too_many_pixels(pixels, max_pixels)
                yield img
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(exc, max_pixels) from None


def _open(path):
    """Image.open restricted to _DECODERS, with every failure turned into an ImageError sentence."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError("The path is a folder, not an image file.")
        if info.st_size == 0:
            raise ImageError("The file is empty (0 bytes).")
        return Image.open(path, formats=_DECODERS)
    except FileNotFoundError:
        raise ImageError("The file does not exist.") from None
    except _DECODE_ERRORS as exc:
        raise _read_error(exc, _NOT_AN_IMAGE) from None


def _too_many_pixels(pixels, limit):
    return ImageError(f"The image has {pixels:,} pixels, more than the limit of {limit:,} (MAX_IMAGE_PIXELS).")


def _pillow_bomb_error(exc, max_pixels):
    """Our sentence for Pillow's "Image size (N pixels) exceeds limit of M pixels, ...", with the lower limit."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if not found:
        return ImageError(f"The image has more pixels than the limit of {max_pixels:,} (MAX_IMAGE_PIXELS).")
    pixels, pillow_limit = map(int, found.groups())
    return _too_many_pixels(pixels, min(max_pixels, pillow_limit))


def _read_error(exc, sentence):
    """The operating system's reason (permission, I/O error) if it gave one; else sentence: the bytes are bad."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return ImageError(f"The file could not be read: {exc.strerror}.")
    return ImageError(sentence)


def _thumbnail(img, size, fit):
    """Decode img at the smallest size JPEG draft() allows, upright it, and resize it to fit size."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        img.draft(None, _draft_size(img.size, size, fit, orientation in _SWAPPING_ORIENTATIONS))
        # After draft() so the (cheap) transpose runs on the reduced image.
        ImageOps.exif_transpose(img, in_place=True)
        return _resize(_to_8bit(img), size, fit)
    except _DECODE_ERRORS as exc:
        raise _read_error(exc, _CORRUPT) from None


def _draft_size(src_size, size, fit, swapped):
    """The smallest decode size (in the file's stored orientation) leaving _REDUCING_GAP times the output pixels."""
    (src_w, src_h), (out_w, out_h) = src_size, (size[::-1] if swapped else size)
    # draft() reduces both axes by one factor, so "stretch", whose axes scale differently,
    # needs the larger scale, as "cover" does.
    scale = (min if fit == "contain" else max)(out_w / src_w, out_h / src_h)
    return math.ceil(src_w * scale * _REDUCING_GAP), math.ceil(src_h * scale * _REDUCING_GAP)


def _resize(img, size, fit):
    if fit == "contain":
        img.thumbnail(size, reducing_gap=_REDUCING_GAP)
        return img
    box = _centre_crop(img.size, size) if fit == "cover" else None
    return img.resize(size, box=box, reducing_gap=_REDUCING_GAP)


def _centre_crop(src_size, size):
    """The largest centred box of src_size with size's aspect ratio (what ImageOps.fit crops)."""
    (src_w, src_h), (out_w, out_h) = src_size, size
    scale = max(out_w / src_w, out_h / src_h)
    crop_w, crop_h = out_w / scale, out_h / scale
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def _to_8bit(img):
    """img as L, LA, RGB or RGBA (alpha kept), converted before resizing.

    Pillow resizes "P" and "1" with NEAREST only and cannot reduce() 16-bit images.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _gray_to_8bit(img)
    if img.mode in ("L", "LA", "RGB", "RGBA") and "transparency" not in img.info:
        return img
    alpha = img.has_transparency_data
    if img.mode in ("1", "L", "LA"):
        return img.convert("LA" if alpha else "L")
    return img.convert("RGBA" if alpha else "RGB")


def _gray_to_8bit(img):
    """Scale a 16-bit, 32-bit or float grey image linearly into L (Pillow's convert("L") clips at 255).

    I;16 uses its full 16-bit range. I and F carry no range, so their white is the first of
    1 (a 0..1 float image), 255 or 65535 that holds every value, else their maximum.
    """
    if img.mode.startswith("I;16"):
        img, black, white = img.convert("I"), 0, 65535
    else:
        low, high = img.getextrema()
        black, white = min(low, 0), next((top for top in (1, 255, 65535) if high <= top), high)
    scale = 255 / (white - black)
    return img.point(lambda value: (value - black) * scale).convert("L")


def _flatten(img):
    """Composite an image with alpha onto white, as JPEG has no alpha channel."""
    if img.mode not in ("LA", "RGBA"):
        return img
    background = Image.new(img.mode[:-1], img.size, "white")
    background.paste(img, mask=img.getchannel("A"))
    return background


def _write_atomically(img, dest, out_format, icc_profile):
    """Save to a hidden temporary file beside dest, then os.replace() it onto dest.

    Readers never see a partial thumbnail; a failure leaves dest as it was and removes the
    temporary file, whose name does not end in an IMAGE_EXTENSIONS suffix (folder listings skip it).
    """
    dest = os.fspath(dest)
    folder = os.path.dirname(dest) or "."
    temp = os.path.join(folder, f".{os.path.basename(dest)}.{os.urandom(6).hex()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(temp, "xb") as file:
            img.save(file, _PILLOW_NAMES[out_format], icc_profile=icc_profile, **_SAVE_OPTIONS[out_format])
        os.replace(temp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(temp)
        if isinstance(exc, OSError):  # strerror, not str(exc), which names the path
            raise ImageError(f"The thumbnail could not be written: {exc.strerror or exc}.") from None
        raise


def histogram(path, max_pixels: int) -> dict[str, list[int]]:
    """Pixel counts per value (256 each) of the image's first frame: {"red", "green", "blue"} for
    colour images, {"luminance"} for grayscale ones. Alpha is ignored; 16-bit values are scaled to 8."""
    with _opened(path, max_pixels) as img:
        try:
            pixels = _to_8bit(img)
            if pixels.mode in ("L", "LA"):
                return {"luminance": pixels.getchannel("L").histogram()}
            counts = pixels.convert("RGB").histogram()
        except _DECODE_ERRORS as exc:
            raise _read_error(exc, _CORRUPT) from None
    return {"red": counts[:256], "green": counts[256:512], "blue": counts[512:]}

"""Image operations for the job service, on Pillow: header-only size reading and thumbnails.

Pure functions: paths, limits and sizes all come in as arguments (no Redis, Flask or
configuration here). Every problem with an image is raised as ImageError, whose message
is one sentence for the user that never contains a file path.
"""

import contextlib
import io
import math
import os
import re
import stat
import struct
import warnings

from PIL import ExifTags, Image, ImageCms, ImageMode, ImageOps


class ImageError(Exception):
    """A problem with one image. str(exc) is ONE sentence a user can act on. It never contains a file path."""


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif", ".bmp", ".tif", ".tiff"})
FORMATS = ("jpeg", "png", "webp", "avif")
FITS = ("contain", "cover", "stretch")
DEFAULT_MAX_PIXELS = 50_000_000
# What one decode may allocate: the image and its decoder's buffers (see _decode_bytes).
DEFAULT_MAX_DECODE_BYTES = 256 * 1024 * 1024
# The largest ICC profile a thumbnail carries; a larger one is applied to the pixels instead (see _fit_profile).
MAX_EMBEDDED_ICC = 64 * 1024

# The decoders Image.open may try: the formats IMAGE_EXTENSIONS stands for, nothing more
# (so an upload is never handed to, say, the EPS plugin, which runs Ghostscript).
_DECODERS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
_NOT_AN_IMAGE = "The file is not an image Pillow can read (JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF)."
_CORRUPT = "The image data is truncated or corrupt."
# What Pillow raises for bad bytes, in Image.open or while decoding. OSError with an errno
# set is the operating system failing to read the file instead (see _read_error).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_SOURCE_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp", "AVIF": "avif"}  # MPO: camera JPEG
_PILLOW_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF"}
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "avif": ".avif"}
# Tuned for speed: no JPEG optimize pass, WebP's fastest method. WebP at 85 as JPEG: at 80 its thumbnails were
# 0.3-0.7 dB below thumbor's (which resamples with LANCZOS); 85 gives 0.4-0.5 dB above, at the same CPU
# (bench/engine.py; methods 2 and 4 cost more and gained nothing). AVIF at speed 8: a 512 px thumbnail's
# encode takes 41 ms against 135 at libavif's default (6), for 0.2 dB and 9% more bytes (speed 10: 14 ms,
# 0.25 dB, 14%); a JPEG's takes ~4 ms.
_SAVE_OPTIONS = {
    "jpeg": {"quality": 85},
    "png": {},
    "webp": {"quality": 85, "method": 0},
    "avif": {"quality": 75, "speed": 8},
}
# A JPEG is decoded scaled by 1/2, 1/4 or 1/8 (DCT scaling: a fraction of a full decode's cost) as far as
# leaves at least the output's size, as thumbor does; the decoded image is then between one and two times the
# output, and the final resample (BICUBIC) makes it. Asking for twice the output (Pillow's thumbnail() does)
# decoded a 1920 px photo whole for a 512 px box: 2.2 times the CPU for 0.1 dB (bench/engine.py).
_DRAFT_GAP = 1.0
# What the decoder cannot scale (PNG, WebP, ...), reduce() averages down to at least this many times the output
# size before the final resample (Pillow's own default for thumbnail(); visually the same as resampling it all).
_REDUCING_GAP = 2.0
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))  # every orientation but upright (1): the others move pixels
_MB = 1024 * 1024
# TIFF tags libtiff sizes its decoding buffer by.
_BITS_PER_SAMPLE, _COMPRESSION, _PHOTOMETRIC, _SAMPLES_PER_PIXEL, _ROWS_PER_STRIP = 258, 259, 262, 277, 278
_TILE_WIDTH, _TILE_LENGTH = 322, 323
_TIFF_JPEG, _TIFF_YCBCR = 7, 6
_SRGB = ImageCms.createProfile("sRGB")


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


def make_thumbnail(
    src,
    dest,
    width=100,
    height=100,
    fit="contain",
    fmt=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    *,
    max_decode_bytes=DEFAULT_MAX_DECODE_BYTES,
) -> dict:
    """Write a thumbnail of src to dest atomically; return {"width", "height", "format"} of what was written.

    dest is a path, or a function of the output's extension (".jpg", ".png" or ".webp") that returns one:
    then the source is opened once, not once to learn its format and again to resize it. Either may
    instead be a (folder descriptor, file name) pair: the file is then written in that open folder,
    wherever a link on its path may lead by then.
    fit: "contain" keeps the aspect ratio inside width x height and never upscales; "cover"
    fills exactly width x height, cropping the centre; "stretch" fills it ignoring the aspect.
    fmt: one of FORMATS, or None for the source's format if it is one of them, else png.
    Only the first frame of an animation is used. The output keeps the pixels, alpha (png,
    webp; jpeg gets a white background) and an RGB source's ICC profile up to MAX_EMBEDDED_ICC
    bytes (a larger one is converted to sRGB); no other metadata. The decode may take at most
    max_decode_bytes. Raises ValueError for arguments outside these choices and ImageError for a bad image.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    if not (width >= 1 and height >= 1):
        raise ValueError(f"width and height must be at least 1, not {width}x{height}")
    with _opened(src, max_pixels) as img:
        out_format = _output_format(img.format, fmt)
        icc_profile = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA") else None
        thumb = _thumbnail(img, (width, height), fit, max_decode_bytes)
        thumb, icc_profile = _fit_profile(thumb, icc_profile)
        if out_format == "jpeg":
            thumb = _flatten(thumb)
        thumb.info.clear()  # save() falls back on info: no EXIF/GPS, comments or stale keys
        dest = dest(_EXTENSIONS[out_format]) if callable(dest) else dest
        _write_atomically(thumb, dest, out_format, icc_profile)
        return {"width": thumb.width, "height": thumb.height, "format": _PILLOW_NAMES[out_format]}


def open_rgb(path, max_pixels: int, min_side: int, *, max_decode_bytes=DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """The first frame of path decoded as an upright (EXIF-transposed) RGB image, fully loaded and
    detached from the file.

    A JPEG is decoded reduced (draft) as far as keeps its short side at least min_side (or
    whole, if it is smaller than that already), in at most max_decode_bytes. Alpha is flattened
    onto white and 16-bit or float images are scaled into 8 bits, as for thumbnails. Raises
    ImageError for a bad image.
    """
    with _opened(path, max_pixels) as img:
        try:
            short = min(img.size)
            if short > min_side:
                scale = min_side / short
                img.draft(None, (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            _check_decode_bytes(img, max_decode_bytes)
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


def _check_decode_bytes(img, limit):
    """Refuse img, opened but not decoded, if its decode would allocate more than limit bytes.

    max_pixels bounds the image, not what decoding it takes: a TIFF tile may be far larger
    than the image, a progressive JPEG is held as coefficients at full size whatever draft()
    chose, a WebP frame is decoded through canvases of its own. Called after draft().
    """
    needed = _decode_bytes(img)
    if needed > limit:
        raise ImageError(
            f"Decoding the image would take about {math.ceil(needed / _MB):,} MB, "
            f"more than the limit of {math.ceil(limit / _MB):,} MB (MAX_DECODE_MB)."
        )


def _decode_bytes(img):
    """The bytes decoding img's first frame allocates: the image as Pillow stores it plus its decoder's
    largest buffer. Checked against the peak RSS of decoding every format in _DECODERS with Pillow 13.
    """
    image = img.width * img.height * _pixel_bytes(img.mode)
    if img.format == "WEBP":  # no tile before load(): libwebp's two RGBA canvases and the frame's bytes
        return image + 3 * img.width * img.height * 4
    if img.format == "AVIF":  # libavif's YUV planes, at most 4:4:4 in 16 bits (and alpha): 8 bytes a pixel
        return image + 8 * img.width * img.height
    return image + max((_tile_buffer_bytes(img, tile) for tile in img.tile), default=0)


def _pixel_bytes(mode):
    """Bytes per pixel Pillow stores mode in: 1 for 1, L and P; 2 for I;16; 4 for I and F and for
    every mode of several bands (RGB is stored as RGBX, LA as LXXA)."""
    info = ImageMode.getmode(mode)
    return 4 if len(info.bands) > 1 else int(info.typestr[2:])


def _tile_buffer_bytes(img, tile):
    """The buffer img's decoder allocates for one entry of img.tile (codec, extents, offset, args)."""
    codec, (x0, _, x1, _) = tile[0], tile[1] or (0, 0, img.width, img.height)
    if codec == "libtiff":
        return _libtiff_buffer_bytes(img)
    if codec == "jpeg":
        return _jpeg_coefficient_bytes(img)
    return (x1 - x0) * _pixel_bytes(img.mode)  # Pillow's own decoders hold one row of their tile


def _libtiff_buffer_bytes(img):
    """libtiff's whole-tile (or whole-strip) buffer, which Pillow's img.tile does not show.

    Pillow hands a compressed TIFF to libtiff as one tile the size of the image, but libtiff
    decodes one TIFF tile at a time into a buffer of TileWidth x TileLength, however much
    larger than the image it is, at the file's bits per pixel. A strip is at most the image's
    height. YCbCr (but for JPEG-compressed) is converted through a further 4 bytes a pixel.
    """
    bits = max(_tiff_numbers(img, _BITS_PER_SAMPLE) or [1])
    samples = max(len(_tiff_numbers(img, _BITS_PER_SAMPLE)), *_tiff_numbers(img, _SAMPLES_PER_PIXEL), 1)
    if _TILE_WIDTH in img.tag_v2 or _TILE_LENGTH in img.tag_v2:
        width = max(_tiff_numbers(img, _TILE_WIDTH) or [img.width])
        rows = max(_tiff_numbers(img, _TILE_LENGTH) or [img.height])
    else:
        width, rows = img.width, min(max(_tiff_numbers(img, _ROWS_PER_STRIP) or [img.height]), img.height)
    buffer = math.ceil(width * bits * samples / 8) * rows
    if _TIFF_YCBCR in _tiff_numbers(img, _PHOTOMETRIC) and _TIFF_JPEG not in _tiff_numbers(img, _COMPRESSION):
        buffer += img.width * min(rows, img.height) * 4
    return buffer


def _tiff_numbers(img, tag):
    """The integer values of a TIFF tag as a list (empty if absent): a crafted file may give several."""
    value = img.tag_v2.get(tag)
    values = value if isinstance(value, tuple) else [value]
    return [int(number) for number in values if isinstance(number, int)]


def _jpeg_coefficient_bytes(img):
    """What libjpeg buffers for a progressive JPEG: every DCT coefficient (2 bytes, 64 a block)
    of every component at the stored size, whatever scale draft() chose. A sequential JPEG is
    decoded a row of blocks at a time (but for one whose components come in separate scans,
    buffered like a progressive one, which Pillow does not tell apart)."""
    if not (img.info.get("progressive") or img.info.get("progression")):
        return 0
    scale = (img.decoderconfig or (1,))[0]
    width, height = img.width * scale, img.height * scale  # the stored size, rounded up by draft()
    h_max = max((h for _, h, _, _ in img.layer), default=1) or 1
    v_max = max((v for _, _, v, _ in img.layer), default=1) or 1
    mcus = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    return sum(mcus * h * v * 64 * 2 for _, h, v, _ in img.layer)


def _thumbnail(img, size, fit, max_decode_bytes):
    """Decode img at the smallest size JPEG draft() allows (_DRAFT_GAP), upright it, and resize it to fit size."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        img.draft(None, _draft_size(img.size, size, fit, orientation in _SWAPPING_ORIENTATIONS))
        _check_decode_bytes(img, max_decode_bytes)  # after draft(), which lowers the cost
        if orientation in _TRANSPOSING_ORIENTATIONS:  # after draft(): the (cheap) transpose runs on the reduced image
            ImageOps.exif_transpose(img, in_place=True)
        img.load()  # here, where a decoding error is named as one: drafted to the output size, nothing else loads it
        return _resize(_to_8bit(img), size, fit)
    except _DECODE_ERRORS as exc:
        raise _read_error(exc, _CORRUPT) from None


def _draft_size(src_size, size, fit, swapped):
    """The smallest decode size (in the file's stored orientation) leaving _DRAFT_GAP times the output's sides."""
    (src_w, src_h), (out_w, out_h) = src_size, (size[::-1] if swapped else size)
    # draft() reduces both axes by one factor, so "stretch", whose axes scale differently,
    # needs the larger scale, as "cover" does.
    scale = (min if fit == "contain" else max)(out_w / src_w, out_h / src_h)
    return math.ceil(src_w * scale * _DRAFT_GAP), math.ceil(src_h * scale * _DRAFT_GAP)


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


def _fit_profile(thumb, icc_profile):
    """(thumb, the profile to embed): a profile over MAX_EMBEDDED_ICC bytes is applied instead.

    A thumbnail is a few KB, so embedding a large profile would make it megabytes: the
    resized pixels are converted from the profile to sRGB (what a file without a profile
    means) and nothing is embedded. A profile ImageCms cannot use is dropped, pixels as they are.
    """
    if icc_profile is None or len(icc_profile) <= MAX_EMBEDDED_ICC:
        return thumb, icc_profile
    try:
        return ImageCms.profileToProfile(thumb, io.BytesIO(icc_profile), _SRGB, outputMode=thumb.mode), None
    except ImageCms.PyCMSError:
        return thumb, None


def _write_atomically(img, dest, out_format, icc_profile):
    """Save to a hidden temporary file beside dest, then os.replace() it onto dest.

    Readers never see a partial thumbnail; a failure leaves dest as it was and removes the
    temporary file, whose name does not end in an IMAGE_EXTENSIONS suffix (folder listings skip it).
    dest: a path, or a (folder descriptor, name) pair, in which case nothing is looked up by path.
    """
    folder_fd, name = dest if isinstance(dest, tuple) else (None, os.fspath(dest))
    head, tail = os.path.split(name)
    temp = os.path.join(head, f".{tail}.{os.urandom(6).hex()}.tmp")
    created = False
    try:
        if folder_fd is None and not os.path.isdir(head or "."):
            os.makedirs(head, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder_fd)
        created = True
        with os.fdopen(fd, "wb") as file:
            img.save(file, _PILLOW_NAMES[out_format], icc_profile=icc_profile, **_SAVE_OPTIONS[out_format])
        os.replace(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                os.remove(temp, dir_fd=folder_fd)
        if isinstance(exc, OSError):  # strerror, not str(exc), which names the path
            raise ImageError(f"The thumbnail could not be written: {exc.strerror or exc}.") from None
        raise


def histogram(path, max_pixels: int, *, max_decode_bytes=DEFAULT_MAX_DECODE_BYTES) -> dict[str, list[int]]:
    """Pixel counts per value (256 each) of the image's first frame: {"red", "green", "blue"} for
    colour images, {"luminance"} for grayscale ones. Alpha is ignored; 16-bit values are scaled to 8.
    The decode may take at most max_decode_bytes."""
    with _opened(path, max_pixels) as img:
        _check_decode_bytes(img, max_decode_bytes)
        try:
            pixels = _to_8bit(img)
            if pixels.mode in ("L", "LA"):
                return {"luminance": pixels.getchannel("L").histogram()}
            counts = pixels.convert("RGB").histogram()
        except _DECODE_ERRORS as exc:
            raise _read_error(exc, _CORRUPT) from None
    return {"red": counts[:256], "green": counts[256:512], "blue": counts[512:]}

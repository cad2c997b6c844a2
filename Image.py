"""Image operations for the job service, on Pillow: header-only size reading and thumbnails. libvips (pyvips)
decodes and shrinks the still images it is cheaper for (READ_FORMATS' libvips_loader).

Pure functions: paths, limits and sizes all come in as arguments (no Redis, Flask or
configuration here). Every problem with an image is raised as ImageError, whose message
is one sentence for the user that never contains a file path.
"""

import contextlib
import functools
import io
import math
import os
import re
import stat
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pillow_heif
import pillow_jxl  # noqa: F401  (registers pillow-jxl-plugin's JPEG XL decoder with Pillow)
import pyvips
from blurhash_rs import blurhash_encode
from PIL import ExifTags, Image, ImageCms, ImageMode

# HEIC/HEIF through pillow-heif (libheif): the primary image only; its thumbnails, depth maps and auxiliary
# images are neither listed nor decoded.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


class ImageError(Exception):
    """A problem with one image. str(exc) is ONE sentence a user can act on. It never contains a file path."""


def _jxl_size(path):
    """A JPEG XL's (width, height) from its SizeHeader (ISO/IEC 18181-1), None for a file of another format.

    pillow-jxl-plugin decodes the whole image as Image.open opens it, so this is read first: a bomb is then
    refused before any pixel is decoded. The codestream starts the file (FF 0A) or sits in the container's
    jxlc box, or its first jxlp box after a 4-byte index.
    """
    with open(path, "rb") as file:
        head = file.read(12)
        if head.startswith(b"\xff\x0a"):
            return _jxl_size_header(head[2:] + file.read(16))
        if head != b"\x00\x00\x00\x0cJXL \r\n\x87\n":
            return None
        for _ in range(64):  # boxes before the codestream (ftyp, jxll, Exif, ...); more is not a real file
            size, kind = struct.unpack(">I4s", file.read(8).rjust(8, b"\0"))
            header = 8 if size != 1 else 16
            if size == 1:
                size = struct.unpack(">Q", file.read(8).rjust(8, b"\0"))[0]
            if kind in (b"jxlc", b"jxlp"):
                file.read(4 if kind == b"jxlp" else 0)
                return _jxl_size_header(file.read(16)[2:])
            if size < header:  # 0 (the box runs to the end) or malformed: no codestream follows
                break
            file.seek(size - header, os.SEEK_CUR)
    raise ImageError(_CORRUPT)


_JXL_U32_BITS = (9, 13, 18, 30)  # SizeHeader's U32(Bits(9) + 1, Bits(13) + 1, Bits(18) + 1, Bits(30) + 1)
_JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}  # width / height


def _jxl_size_header(data):
    """(width, height) from the bits after the codestream's signature, read least significant first."""
    value, position = int.from_bytes(data, "little"), 0

    def bits(count):
        nonlocal position
        if position + count > len(data) * 8:
            raise ImageError(_CORRUPT)
        position += count
        return (value >> (position - count)) & ((1 << count) - 1)

    def dimension(small):
        return (bits(5) + 1) * 8 if small else bits(_JXL_U32_BITS[bits(2)]) + 1

    small = bits(1)
    height = dimension(small)
    ratio = bits(3)
    if ratio:
        numerator, denominator = _JXL_RATIOS[ratio]
        return height * numerator // denominator, height
    return dimension(small), height


@dataclass(frozen=True)
class _Format:
    """A format the service reads: what users call it, its media type and file extensions (the first is what a
    downloaded file of it without one gets), what its decoder allocates besides
    the image (bytes a pixel, measured as peak RSS with Pillow 13; None: Pillow's tile list tells, see
    _tile_buffer_bytes), the output its thumbnails get by default (None: png), whether its files may be
    animations (a multi-page TIFF is not one), for a plugin that decodes the whole image as Image.open opens
    it, a function that reads (width, height) from the file first (None for a file of another format), the
    libvips loader that decodes and shrinks its stills instead of Pillow (None: Pillow decodes them), whether
    that loader decodes scaled (its `scale` option), and whether Pillow's decoder scales it down as it decodes
    (draft(): then Pillow decodes it, where that scales).
    libvips is chosen where it costs less for no less quality (bench/engine.py): it shrinks a WebP as it
    decodes it, streams a PNG through its resize where Pillow decodes it whole first, and resizes a JPEG no
    DCT scale fits (a box over half its size) in half Pillow's CPU."""

    label: str
    media_type: str
    extensions: tuple[str, ...]
    decoder_bytes_per_pixel: float | None = None
    default_output: str | None = None
    animates: bool = False
    size_before_open: Callable | None = None
    libvips_loader: str | None = None
    libvips_scales: bool = False
    drafts: bool = False


# The formats the service reads, by Pillow's name; Image.open tries these, in this order, and nothing else
# (so an upload is never handed to, say, the EPS plugin, which runs Ghostscript). Adding a format is one entry.
READ_FORMATS = {
    # JPEG: decoded scaled by Pillow where the box allows it (draft()); libvips shrinks it where not.
    "JPEG": _Format(
        "JPEG",
        "image/jpeg",
        (".jpg", ".jpeg"),
        default_output="jpeg",
        libvips_loader="VipsForeignLoadJpeg",
        drafts=True,
    ),
    "PNG": _Format(
        "PNG", "image/png", (".png",), default_output="png", animates=True, libvips_loader="VipsForeignLoadPng"
    ),
    # WebP: no tile before load(); libwebp's two RGBA canvases and the frame's bytes.
    "WEBP": _Format(
        "WebP",
        "image/webp",
        (".webp",),
        12,
        "webp",
        animates=True,
        libvips_loader="VipsForeignLoadWebp",
        libvips_scales=True,
    ),
    # AVIF: libavif's YUV planes, at most 4:4:4 in 16 bits, and alpha.
    "AVIF": _Format("AVIF", "image/avif", (".avif",), 8, "avif", animates=True),
    # HEIC: libheif's planes, as AVIF's (measured 4 a pixel at 8 bits). Thumbnails are JPEG: browsers but
    # Safari cannot show HEIC, and writing HEVC needs an encoder the wheels do not all carry.
    "HEIF": _Format("HEIC", "image/heic", (".heic", ".heif"), 8, "jpeg"),
    # GIF: a still one becomes PNG (no 256-colour palette to fit into); an animated one stays GIF.
    # JPEG XL (pillow-jxl-plugin): the file held whole beside the image and libjxl's buffers (measured 3.7 a
    # pixel at 8 bits, 4.8 with alpha); its first frame only. Thumbnails are JPEG: only Safari shows JPEG XL.
    "JXL": _Format("JPEG XL", "image/jxl", (".jxl",), 6, "jpeg", size_before_open=_jxl_size),
    "GIF": _Format("GIF", "image/gif", (".gif",), animates=True),
    "BMP": _Format("BMP", "image/bmp", (".bmp",)),
    "TIFF": _Format("TIFF", "image/tiff", (".tif", ".tiff")),
}
_SAME_AS = {"MPO": "JPEG"}  # what Pillow calls many camera JPEGs


def _libvips_reads_only_read_formats():
    """libvips parses only the files READ_FORMATS hands it: every loader of its own (it has many: PDF, SVG,
    MATLAB, FITS, ...) is blocked but the libvips_loader entries. Its operation cache is off, so a worker's
    memory stays flat over thousands of images, and a thumbnail runs on one thread: a worker is a process a
    core already (more threads gave no image sooner in a batch, only CPU in hand-offs)."""
    pyvips.operation_block_set("VipsForeignLoad", True)
    for fmt in READ_FORMATS.values():
        if fmt.libvips_loader:
            pyvips.operation_block_set(fmt.libvips_loader, False)
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)


_libvips_reads_only_read_formats()
IMAGE_EXTENSIONS = frozenset(extension for fmt in READ_FORMATS.values() for extension in fmt.extensions)
# Served files' media types by extension: Python's mimetypes knows no .webp without the system's mime.types,
# which a slim container lacks.
MEDIA_TYPES = {extension: fmt.media_type for fmt in READ_FORMATS.values() for extension in fmt.extensions}
# Raised when what the engine makes of the same image and parameters changes (3: animations kept, HEIC read;
# 4: PNG and WebP stills, and JPEGs not drafted, shrunk by libvips; 5: AVIF resampled with LANCZOS, placeholders
# by blurhash-rs, perceptual hashes decoded as thumbnails are): results remembered under an earlier version are
# made again (imagejobs/reuse.py).
ENGINE_VERSION = 5
FORMATS = ("jpeg", "png", "webp", "avif", "gif")
ANIMATED_FORMATS = frozenset({"png", "webp", "avif", "gif"})  # outputs that keep an animation
FRAMES = ("all", "first")
FITS = ("contain", "cover", "stretch")
# Where a crop (fit="cover") sits: the centre, an edge or a corner (as fractions of the width and height, the
# point the crop is centred on as nearly as the image allows), or "smart" (see _interest_point).
_COMPASS = {
    "center": (0.5, 0.5),
    "north": (0.5, 0.0),
    "south": (0.5, 1.0),
    "east": (1.0, 0.5),
    "west": (0.0, 0.5),
    "northeast": (1.0, 0.0),
    "northwest": (0.0, 0.0),
    "southeast": (1.0, 1.0),
    "southwest": (0.0, 1.0),
}
GRAVITIES = (*_COMPASS, "smart")
DEFAULT_MAX_PIXELS = 50_000_000
# What one decode may allocate: the image and its decoder's buffers (see _decode_bytes).
DEFAULT_MAX_DECODE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_FRAMES = 1000
# The largest ICC profile a thumbnail carries; a larger one is applied to the pixels instead (see _fit_profile).
MAX_EMBEDDED_ICC = 64 * 1024

_LABELS = [fmt.label for fmt in READ_FORMATS.values()]
_NOT_AN_IMAGE = f"The file is not an image Pillow can read ({', '.join(_LABELS[:-1])} or {_LABELS[-1]})."
_CORRUPT = "The image data is truncated or corrupt."
# What Pillow raises for bad bytes, in Image.open or while decoding. OSError with an errno
# set is the operating system failing to read the file instead (see _read_error).
# pillow-jxl-plugin raises libjxl's errors as RuntimeError; libvips its own (pyvips.Error).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, RuntimeError, pyvips.Error)

_PILLOW_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}
OUTPUT_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "avif": ".avif", "gif": ".gif"}
# Tuned for speed: no JPEG optimize pass, WebP's fastest method. WebP at 85 as JPEG: at 80 its thumbnails were
# 0.3-0.7 dB below thumbor's (which resamples with LANCZOS); 85 gives 0.4-0.5 dB above, at the same CPU
# (bench/engine.py; methods 2 and 4 cost more and gained nothing). AVIF at speed 8: a 512 px thumbnail's
# encode takes 41 ms against 135 at libavif's default (6), for 0.2 dB and 9% more bytes (speed 10: 14 ms,
# 0.25 dB, 14%); a JPEG's takes ~4 ms. AVIF at quality 85: at Pillow's 75 the thumbnails were 1-2 dB below
# thumbor's (quality 80, speed 6; bench/peers.py); 85 is within 0.3 dB at 512 and above at 1024, for as many
# bytes (+14% at 1024) and half thumbor's CPU; 100 px is 0.75 dB below (the resize, not the encoder).
_SAVE_OPTIONS = {
    "jpeg": {"quality": 85},
    "png": {},
    "webp": {"quality": 85, "method": 0},
    "avif": {"quality": 85, "speed": 8},
    "gif": {},
}
# A JPEG is decoded scaled by 1/2, 1/4 or 1/8 (DCT scaling: a fraction of a full decode's cost) as far as
# leaves at least the output's size, as thumbor does; the decoded image is then between one and two times the
# output, and the final resample (_RESAMPLING) makes it. Asking for twice the output (Pillow's thumbnail() does)
# decoded a 1920 px photo whole for a 512 px box: 2.2 times the CPU for 0.1 dB (bench/engine.py).
_DRAFT_GAP = 1.0
# The final resample's filter, by output format; BICUBIC (Pillow's thumbnail() default) for the others. AVIF keeps
# the detail JPEG's and WebP's encoders lose, so BICUBIC's softness showed: a JPEG's AVIF thumbnails were 0.8 dB
# below thumbor's at 100 and 256 px (bench/peers.py). LANCZOS gives +0.85 dB at 100 px, +0.77 at 256 and +0.47 at
# 512, for about 1 ms where the AVIF encode takes 9 to 100; JPEG out would gain 0.2-0.4 dB for 10-15% more CPU, and
# is already above thumbor's (bench/engine.py and in-process runs, 2026-12-07).
_RESAMPLING = {"avif": Image.Resampling.LANCZOS}
# What the decoder cannot scale (PNG, WebP, ...), reduce() averages down to at least this many times the output
# size before the final resample (Pillow's own default for thumbnail(); visually the same as resampling it all).
_REDUCING_GAP = 2.0
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees
# What turns an image stored in each EXIF orientation but upright (1) upright: the standard's table, which
# ImageOps.exif_transpose applies to an image's own EXIF (a copy libvips shrank carries none).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MB = 1024 * 1024
# TIFF tags libtiff sizes its decoding buffer by.
_BITS_PER_SAMPLE, _COMPRESSION, _PHOTOMETRIC, _SAMPLES_PER_PIXEL, _ROWS_PER_STRIP = 258, 259, 262, 277, 278
_TILE_WIDTH, _TILE_LENGTH = 322, 323
_TIFF_JPEG, _TIFF_YCBCR = 7, 6
_SRGB = ImageCms.createProfile("sRGB")


def read_size(path, max_pixels: int, *, max_decode_bytes=DEFAULT_MAX_DECODE_BYTES) -> dict:
    """{"width", "height", "format", "mode"} from the header only (pixels are never decoded), and "frames"
    for an animation (its frames' headers are read to count them).

    format is Pillow's name, e.g. "JPEG". The size is the stored one, before any EXIF rotation (a HEIC's
    is upright already: libheif applies its rotation). A JPEG XL is decoded to be read (its plugin decodes as
    it opens), within max_decode_bytes.
    """
    with _opened(path, max_pixels, max_decode_bytes) as img:
        size = {"width": img.width, "height": img.height, "format": img.format, "mode": img.mode}
        frames = _frame_count(img)
        return {**size, "frames": frames} if frames > 1 else size


def source_extension(src_format) -> str:
    """The usual extension of a file in a format read_size names (".jpg" for "JPEG" or "MPO"), or ""."""
    source = READ_FORMATS.get(_SAME_AS.get(src_format, src_format))
    return source.extensions[0] if source else ""


def output_extension(src_format, fmt, animated=False) -> str:
    """The extension (".jpg", ".png", ...) of what make_thumbnail writes for these arguments.

    src_format is Pillow's name of the source's format (read_size()["format"]) or None if unknown;
    animated: whether the source is an animation whose frames are all kept.
    """
    return OUTPUT_EXTENSIONS[_output_format(src_format, fmt, animated)]


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
    frames="all",
    max_frames=DEFAULT_MAX_FRAMES,
    placeholder=False,
    gravity="center",
    focus=None,
) -> dict:
    """Write a thumbnail of src to dest atomically; return {"width", "height", "format"} of what was written.

    dest is a path, or a function of the output's extension (".jpg", ".png" or ".webp") that returns one:
    then the source is opened once, not once to learn its format and again to resize it. Either may
    instead be a (folder descriptor, file name) pair: the file is then written in that open folder,
    wherever a link on its path may lead by then.
    fit: "contain" keeps the aspect ratio inside width x height and never upscales; "cover"
    fills exactly width x height, cropping; "stretch" fills it ignoring the aspect.
    gravity (GRAVITIES) and focus say where a cover's crop sits: focus, an (x, y) pair of fractions of the
    width and height, is the point the crop is centred on as nearly as it can be; else gravity: "center",
    an edge or a corner, or "smart", the part with the most detail, colour and skin (_interest_point). An
    animation's frames are all cropped where its first frame's crop is.
    fmt: one of FORMATS, or None for the source format's default output (READ_FORMATS), else png.
    frames: "all" keeps every frame of an animation (GIF, WebP, APNG, AVIF) when the output can animate
    (ANIMATED_FORMATS), each resized with the same fit, with its duration and the loop count; it may have
    at most max_frames frames. "first", or an output that cannot animate (jpeg), makes a still of the first.
    The output keeps the pixels, alpha (not jpeg: it gets a white background) and an RGB source's ICC
    profile up to MAX_EMBEDDED_ICC bytes (a larger one is converted to sRGB); no other metadata. The decode
    may take at most max_decode_bytes, every frame kept counted. placeholder: also return a BlurHash of the
    thumbnail ("placeholder", see placeholder_of). Raises ValueError for arguments outside these choices and
    ImageError for a bad image.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    if frames not in FRAMES:
        raise ValueError(f"frames must be one of {FRAMES}, not {frames!r}")
    if gravity not in GRAVITIES:
        raise ValueError(f"gravity must be one of {GRAVITIES}, not {gravity!r}")
    if focus is not None and not (len(focus) == 2 and all(0 <= share <= 1 for share in focus)):
        raise ValueError(f"focus must be two fractions from 0 to 1, not {focus!r}")
    place = _Placement(gravity, tuple(focus) if focus is not None else None)
    if not (width >= 1 and height >= 1):
        raise ValueError(f"width and height must be at least 1, not {width}x{height}")
    with _opened(src, max_pixels, max_decode_bytes) as img:
        count = _frame_count(img) if frames == "all" else 1
        out_format = _output_format(img.format, fmt, count > 1)
        icc_profile = img.info.get("icc_profile") if img.mode in ("RGB", "RGBA") else None
        resample = _RESAMPLING.get(out_format, Image.Resampling.BICUBIC)
        if count > 1 and out_format in ANIMATED_FORMATS:
            thumbs, animation = _animation(
                img, count, (width, height), fit, place, resample, max_frames, max_decode_bytes
            )
        else:
            thumbs, animation = [_thumbnail(img, (width, height), fit, place, resample, max_decode_bytes)], {}
        thumbs, icc_profile = _for_output(thumbs, icc_profile, out_format)
        dest = dest(OUTPUT_EXTENSIONS[out_format]) if callable(dest) else dest
        _write_atomically(thumbs, dest, out_format, icc_profile, animation)
        made = {"width": thumbs[0].width, "height": thumbs[0].height, "format": _PILLOW_NAMES[out_format]}
        if len(thumbs) > 1:
            made["frames"] = len(thumbs)
        if placeholder:
            made["placeholder"] = placeholder_of(thumbs[0])
        return made


# BlurHash's components across the long side and the short one: 4 x 3 gives 28 characters.
_PLACEHOLDER_COMPONENTS = (4, 3)
_PLACEHOLDER_SIDE = 32  # the hash is made from a copy this small: a blur needs no more


def placeholder_of(img) -> str:
    """A BlurHash (https://blurha.sh) of img, which a page can draw blurred while the image loads: from a copy
    at most _PLACEHOLDER_SIDE pixels a side, alpha flattened onto white."""
    small = _flatten(img.convert("RGBA") if img.mode == "P" else img).convert("RGB")  # a copy: img stays as it is
    small.thumbnail((_PLACEHOLDER_SIDE, _PLACEHOLDER_SIDE))
    long, short = _PLACEHOLDER_COMPONENTS
    x, y = (long, short) if small.width >= small.height else (short, long)
    return blurhash_encode(small, x_components=x, y_components=y)


def open_rgb(path, max_pixels: int, min_side: int, *, max_decode_bytes=DEFAULT_MAX_DECODE_BYTES) -> Image.Image:
    """The first frame of path decoded as an upright (EXIF-transposed) RGB image, fully loaded and
    detached from the file.

    It is decoded reduced as far as keeps its short side at least min_side (or whole, if it is smaller
    than that already): a JPEG by its DCT scaling, a PNG or WebP still by libvips' shrink, as a thumbnail's
    decode (_thumbnail), else whole by Pillow (_decoded_at_least), in at most max_decode_bytes. The
    orientation is read and applied as for a thumbnail. Alpha is flattened onto white and 16-bit or float
    images are scaled into 8 bits. Raises ImageError for a bad image.
    """
    with _opened(path, max_pixels, max_decode_bytes) as img:
        try:
            orientation = _orientation(img)
            decoded = _decoded_at_least(img, min_side, orientation, max_decode_bytes)
            if orientation in _UPRIGHT:
                decoded = decoded.transpose(_UPRIGHT[orientation])
            return _flatten(_to_8bit(decoded)).convert("RGB")  # convert() always returns a loaded copy
        except _DECODE_ERRORS as exc:
            error = _read_error(exc, _CORRUPT)
    raise error  # outside the except, as in _thumbnail


def _decoded_at_least(img, min_side, orientation, max_decode_bytes):
    """img decoded in its stored orientation, its short side reduced toward min_side but not below it.

    Unlike a thumbnail's, a JPEG no DCT scale fits is decoded whole by Pillow: what follows (imagehash's resize,
    the classifier's crop and resize) is cheap, and libvips' decode and shrink cost more (a 640x427 photo into
    the classifier's input: 7.7 ms against 4.4) and moved its top label in 16 of 120 photos."""
    short = min(img.size)
    if short > min_side:
        scale = min_side / short
        size = (math.ceil(img.width * scale), math.ceil(img.height * scale))
        if _format_of(img).drafts:
            _draft_scales(img, size)  # Pillow decodes it, at the scale that fits, if one does
        elif (shrunk := _shrunk_by_libvips(img, size, "cover", orientation, size, max_decode_bytes)) is not None:
            return shrunk
    return _decoded(img, max_decode_bytes)


# The side open_rgb decodes at least for a perceptual hash: pHash resizes to 32 x 32 (a JPEG's draft then
# decodes it at 1/8 or so, a fraction of a full decode's cost; libvips shrinks a PNG or WebP as it decodes).
_HASH_SIDE = 64


def perceptual_hash(path, max_pixels: int, *, max_decode_bytes=DEFAULT_MAX_DECODE_BYTES) -> str:
    """The 64-bit perceptual hash (imagehash's pHash: the sign of each of the 8 x 8 lowest frequencies of a
    32 x 32 grey copy's DCT) of the image's first frame, upright, as 16 hexadecimal digits. Resized and
    re-encoded copies differ from it by 0-2 bits, copies cropped 5% a side by 4-10, unrelated photos by
    about 32 (28 at the fewest, measured on testdata/ and scikit-image's photos)."""
    import imagehash  # numpy and imagehash here: the API imports this module for its tables, and needs neither

    return str(imagehash.phash(open_rgb(path, max_pixels, _HASH_SIDE, max_decode_bytes=max_decode_bytes)))


def _output_format(src_format, fmt, animated=False):
    if fmt is None:
        name = (src_format or "").upper()
        source = READ_FORMATS.get(_SAME_AS.get(name, name))
        if name == "GIF" and animated:
            return "gif"
        return (source and source.default_output) or "png"
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be None or one of {FORMATS}, not {fmt!r}")
    return fmt


def _frame_count(img):
    """img's frames if its format makes animations, else 1 (a multi-page TIFF or a HEIC's other images are
    not frames). Counting a GIF's reads every frame's header, decoding nothing."""
    return getattr(img, "n_frames", 1) if _format_of(img).animates else 1


@contextlib.contextmanager
def _opened(path, max_pixels, max_decode_bytes):
    """Yield path opened lazily (header parsed, no pixels decoded but by a plugin that decodes as it opens,
    whose image is first checked against both limits), once known to be within max_pixels.

    The limit that applies is max_pixels, so Pillow's DecompressionBombWarning is silenced;
    its DecompressionBombError (above twice PIL.Image.MAX_IMAGE_PIXELS, raised inside
    Image.open, before our own check can run, or while decoding a frame) becomes ImageError.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(path, max_pixels, max_decode_bytes) as img:
                pixels = img.width * img.height
                if pixels > max_pixels:
                    raise _too_many_pixels(pixels, max_pixels)
                yield img
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(exc, max_pixels) from None


def _check_before_open(path, max_pixels, max_decode_bytes):
    """The limits, for a file whose plugin decodes it as it opens (READ_FORMATS' size_before_open): True if it
    is one (a failure to open it is then its data's), False if it is of another format."""
    for fmt in READ_FORMATS.values():
        if fmt.size_before_open is None:
            continue
        size = fmt.size_before_open(path)
        if size is not None:
            pixels = size[0] * size[1]
            if pixels > max_pixels:
                raise _too_many_pixels(pixels, max_pixels)
            _refuse_over(pixels * (4 + fmt.decoder_bytes_per_pixel), max_decode_bytes, "image")
            return True
    return False


def _open(path, max_pixels, max_decode_bytes):
    """Image.open restricted to READ_FORMATS, with every failure turned into an ImageError sentence; a file
    whose plugin decodes as it opens is first held to the limits (_check_before_open)."""
    recognised = False
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError("The path is a folder, not an image file.")
        if info.st_size == 0:
            raise ImageError("The file is empty (0 bytes).")
        recognised = _check_before_open(path, max_pixels, max_decode_bytes)
        return Image.open(path, formats=tuple(READ_FORMATS))
    except FileNotFoundError:
        raise ImageError("The file does not exist.") from None
    except _DECODE_ERRORS as exc:  # a file recognised before Image.open failed in its plugin's decoding
        raise _read_error(exc, _CORRUPT if recognised else _NOT_AN_IMAGE) from None


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


def _check_decode_bytes(img, limit, kept=0):
    """Refuse img, opened but not decoded, if its decode, and kept bytes held meanwhile (an animation's
    resized frames), would allocate more than limit bytes.

    max_pixels bounds the image, not what decoding it takes: a TIFF tile may be far larger
    than the image, a progressive JPEG is held as coefficients at full size whatever draft()
    chose, a WebP frame is decoded through canvases of its own. Called after draft().
    """
    _refuse_over(_decode_bytes(img) + kept, limit, "animation" if kept else "image")


def _refuse_over(needed, limit, what):
    if needed > limit:
        raise ImageError(
            f"Decoding the {what} would take about {math.ceil(needed / _MB):,} MB, "
            f"more than the limit of {math.ceil(limit / _MB):,} MB (MAX_DECODE_MB)."
        )


def _decode_bytes(img):
    """The bytes decoding img's first frame allocates: the image as Pillow stores it plus its decoder's
    largest buffer. Checked against the peak RSS of decoding every format in READ_FORMATS with Pillow 13.
    """
    image = img.width * img.height * _pixel_bytes(img.mode)
    decoder = _format_of(img).decoder_bytes_per_pixel
    if decoder is not None:
        return image + math.ceil(decoder * img.width * img.height)
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


def _thumbnail(img, size, fit, place, resample, max_decode_bytes):
    """Decode img upright, as small as keeps the output's size, and resize it to fit size.

    The decoder: Pillow's where it scales as it decodes (a JPEG by 1/2 to 1/8, _draft_scales); else libvips'
    where READ_FORMATS names a libvips_loader (_shrunk_by_libvips); else Pillow's, whole. Either way the
    orientation is Pillow's reading of the file (_orientation), applied after the reduced decode, where the
    transpose is cheap. A smart crop is decoded with at least _SMART_DECODE_PIXELS, for the face detector.
    """
    least = _SMART_DECODE_PIXELS if place.gravity == "smart" and place.focus is None else 0
    try:
        orientation = _orientation(img)
        decode_size = _draft_size(img.size, size, fit, orientation in _SWAPPING_ORIENTATIONS, least)
        shrunk = None
        if not _draft_scales(img, decode_size):
            shrunk = _shrunk_by_libvips(img, size, fit, orientation, decode_size, max_decode_bytes)
        decoded = _decoded(img, max_decode_bytes) if shrunk is None else shrunk
        if orientation in _UPRIGHT:
            decoded = decoded.transpose(_UPRIGHT[orientation])
        return _resize(_to_8bit(decoded), size, fit, place, resample)
    except _DECODE_ERRORS as exc:
        error = _read_error(exc, _CORRUPT)
    raise error  # outside the except: the decoder's exception, and the open file its traceback may hold, dropped


def _orientation(img):
    """img's EXIF orientation (1, upright, if none), from what its header holds: EXIF, or XMP's tiff:Orientation.
    Pillow's own PNG getexif() decodes the whole image to look for an eXIf chunk after the pixels; the base
    method reads the chunks before them, as libvips does, and decodes nothing."""
    return Image.Image.getexif(img).get(ExifTags.Base.Orientation, 1)


def _draft_scales(img, decode_size):
    """Ask Pillow's decoder for img at decode_size, or the nearest larger scale it decodes at (a JPEG's DCT
    scaling, draft()), if READ_FORMATS says it can: True if it will decode img smaller than it is stored."""
    if not _format_of(img).drafts:
        return False
    stored = img.size
    img.draft(None, decode_size)
    return img.size != stored


def _decoded(img, max_decode_bytes):
    """img decoded by Pillow, at the scale draft() chose, if it did."""
    _check_decode_bytes(img, max_decode_bytes)  # after draft(), which lowers the cost
    img.load()  # here, where a decoding error is named as one: drafted to the output size, nothing else loads it
    return img


def _format_of(img):
    return READ_FORMATS[_SAME_AS.get(img.format, img.format)]


# What libvips' thumbnail gives, by its bands: 8 bits (it brings 16-bit images down itself), grey or sRGB.
_LIBVIPS_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# libvips copies an image's text metadata into every image of its pipeline: a PNG of 60 MB of text chunks took
# 4 times what Pillow does. One with more than this much metadata is decoded by Pillow.
_LIBVIPS_MAX_METADATA = 1024 * 1024


def _shrunk_by_libvips(img, size, fit, orientation, decode_size, max_decode_bytes):
    """img in its stored orientation, decoded by its format's libvips_loader and shrunk to the size _resize
    starts from: the output's own size for "contain", else decode_size (_draft_size). None when Pillow decodes
    it instead: no libvips_loader; an animation, whose frames Pillow composes; CMYK, which Pillow converts by
    formula where libvips would through a profile (one rule for every CMYK image); more than
    _LIBVIPS_MAX_METADATA of metadata; or nothing to shrink. libvips reads the file Pillow opened and measured,
    through its descriptor, not its path; it converts no colours (the ICC profile is handled as for every
    format, _for_output). One libvips thumbnail costs 1.2-2x less CPU than Pillow's whole decode and resize
    (bench/engine.py): WebP is decoded scaled, and a PNG or an unscaled JPEG streamed through the shrink."""
    fmt = _format_of(img)
    if fmt.libvips_loader is None or getattr(img, "is_animated", False) or img.mode == "CMYK":
        return None
    if sum(len(value) for value in img.info.values() if isinstance(value, (str, bytes))) > _LIBVIPS_MAX_METADATA:
        return None
    swapped = orientation in _SWAPPING_ORIENTATIONS
    if fit == "contain":
        upright = _output_size(img.size[::-1] if swapped else img.size, size, fit)
        width, height = upright[::-1] if swapped else upright
    else:
        width, height = decode_size
    if width >= img.width or height >= img.height:
        return None
    _check_decode_bytes(img, max_decode_bytes)
    # A loader that decodes scaled (libwebp) is asked for _REDUCING_GAP times the output: scaled to the output
    # itself, a WebP thumbnail was 40.3 dB from the reference at 100 px, against 48.9 so, for the same CPU.
    scale = min(1.0, _REDUCING_GAP * max(width / img.width, height / img.height)) if fmt.libvips_scales else 1.0
    options = {"scale": scale} if scale < 1 else {}
    with _libvips_source(img) as source:
        decoded = pyvips.Image.new_from_source(source, "", access="sequential", fail_on="truncated", **options)
        if abs(decoded.width - img.width * scale) > 1 or abs(decoded.height - img.height * scale) > 1:
            raise ValueError("libvips read another image than Pillow measured")  # the file changed: corrupt
        thumb = decoded.thumbnail_image(width, height=height, size="force", no_rotate=True)
        pixels = thumb.write_to_memory()
    if thumb.format != "uchar" or thumb.bands not in _LIBVIPS_MODES:
        raise ValueError(f"libvips gave {thumb.bands} bands of {thumb.format}")  # a decoding error: corrupt
    return Image.frombytes(_LIBVIPS_MODES[thumb.bands], (thumb.width, thumb.height), pixels)


@contextlib.contextmanager
def _libvips_source(img):
    """A libvips source reading the file img was opened from. libvips reads through a copy of its descriptor,
    which shares the file's offset with Pillow's buffered reader: the offset is put back after, for Pillow."""
    descriptor = img.fp.fileno()
    offset = os.lseek(descriptor, 0, os.SEEK_CUR)
    try:
        yield pyvips.Source.new_from_descriptor(descriptor)
    finally:
        os.lseek(descriptor, offset, os.SEEK_SET)


def _animation(img, count, size, fit, place, resample, max_frames, max_decode_bytes):
    """(every frame resized, the save() options that keep its timing): img is an animation of count frames.

    Each frame comes whole, as Pillow composes it from the frames before it (disposal and blending applied),
    so the thumbnail's frames each replace the last. Refused before any frame is decoded if there are more
    than max_frames, or if one frame's decode and every resized frame held until the save exceed
    max_decode_bytes. The EXIF orientation of an animation's frames is not applied.
    """
    if count > max_frames:
        raise ImageError(
            f"The animation has {count:,} frames, more than the limit of {max_frames:,} (MAX_FRAMES); "
            "frames=first makes a still of its first frame."
        )
    out_w, out_h = _output_size(img.size, size, fit)
    kept = count * out_w * out_h * 4  # RGBA
    _check_decode_bytes(img, max_decode_bytes, kept)
    thumbs, durations = [], []
    try:
        for index in range(count):
            img.seek(index)
            img.load()
            frame = img.convert("RGBA") if img.has_transparency_data else img.convert("RGB")  # a copy
            if index == 0 and fit == "cover":  # every frame cropped alike: where the first frame's crop is
                place = _Placement("center", _crop_centre(frame, size, place))
            thumbs.append(_resize(_to_8bit(frame), size, fit, place, resample))
            durations.append(round(img.info.get("duration") or 0))
    except _DECODE_ERRORS as exc:
        raise _read_error(exc, _CORRUPT) from None
    if len({thumb.mode for thumb in thumbs}) > 1:  # one mode for the file: RGBA if any frame has alpha
        thumbs = [thumb.convert("RGBA") for thumb in thumbs]
    timing = {"duration": durations}
    if "loop" in img.info:  # a GIF without a loop count plays once
        timing["loop"] = img.info["loop"]
    return thumbs, timing


def _output_size(src_size, size, fit):
    """The size _resize makes of src_size: for "contain", Pillow 13's thumbnail() rule (never larger, the aspect
    kept, each side rounded down or up, whichever keeps the aspect closer), so libvips shrinks to what Pillow
    would make (_shrunk_by_libvips)."""
    (width, height), (box_w, box_h) = src_size, size
    if fit != "contain":
        return size
    if box_w >= width and box_h >= height:
        return src_size
    aspect = width / height
    if box_w / box_h >= aspect:
        return _closest_side(box_h * aspect, lambda side: abs(aspect - side / box_h)), box_h
    return box_w, _closest_side(box_w / aspect, lambda side: abs(aspect - box_w / side) if side else 0)


def _closest_side(exact, error):
    return max(min(math.floor(exact), math.ceil(exact), key=error), 1)


def _draft_size(src_size, size, fit, swapped, least_pixels=0):
    """The smallest decode size (in the file's stored orientation) leaving _DRAFT_GAP times the output's sides,
    and at least least_pixels (or the whole image)."""
    (src_w, src_h), (out_w, out_h) = src_size, (size[::-1] if swapped else size)
    # draft() reduces both axes by one factor, so "stretch", whose axes scale differently,
    # needs the larger scale, as "cover" does.
    scale = (min if fit == "contain" else max)(out_w / src_w, out_h / src_h)
    scale = max(scale, math.sqrt(least_pixels / (src_w * src_h)))
    return math.ceil(src_w * scale * _DRAFT_GAP), math.ceil(src_h * scale * _DRAFT_GAP)


@dataclass(frozen=True)
class _Placement:
    """Where a cover's crop sits: gravity, unless focus (an (x, y) pair of fractions) is given."""

    gravity: str = "center"
    focus: tuple[float, float] | None = None


def _resize(img, size, fit, place, resample):
    if fit == "contain":
        img.thumbnail(size, resample, reducing_gap=_REDUCING_GAP)
        return img
    box = _crop_box(img.size, size, _crop_centre(img, size, place)) if fit == "cover" else None
    return img.resize(size, resample, box=box, reducing_gap=_REDUCING_GAP)


def _crop_centre(img, size, place):
    """The point (fractions of img's width and height) a cover's crop of img is centred on, as nearly as the
    image allows."""
    if place.focus is not None:
        return place.focus
    if place.gravity == "smart":
        return _interest_point(img, _crop_share(img.size, size))
    return _COMPASS[place.gravity]


def _crop_share(src_size, size):
    """(width, height) of the largest box of src_size with size's aspect ratio, as fractions of src_size."""
    (src_w, src_h), (out_w, out_h) = src_size, size
    scale = max(out_w / src_w, out_h / src_h)
    return out_w / scale / src_w, out_h / scale / src_h


def _crop_box(src_size, size, centre):
    """The largest box of src_size with size's aspect ratio, centred on centre (fractions) as nearly as it fits
    (centre (0.5, 0.5): what ImageOps.fit crops)."""
    (src_w, src_h), (share_w, share_h) = src_size, _crop_share(src_size, size)
    # min(): floating point made a share of 1 a hair more than the whole side (4496x117 covered into 96x93), and
    # Pillow refuses a box offset of -2e-13 as negative.
    crop_w, crop_h = min(share_w * src_w, src_w), min(share_h * src_h, src_h)
    left = max(min(centre[0] * src_w - crop_w / 2, src_w - crop_w), 0)
    top = max(min(centre[1] * src_h - crop_h / 2, src_h - crop_h), 0)
    return left, top, left + crop_w, top + crop_h


# The side of the copy _interest_point scores; how much colour and skin weigh against detail (edges); and how
# much the faces found weigh against all of those together (faces first: a crop keeps the most face it can).
_ATTENTION_SIDE = 128
_SATURATION_WEIGHT, _SKIN_WEIGHT = 1.0, 2.0
_FACES_WEIGHT = 10.0


def _interest_point(img, share):
    """The centre (fractions of the width and height) of the box of this share of img's width and height that
    holds the most of what draws the eye. Faces first (_faces: OpenCV's face detector): they outweigh the rest
    tenfold, so the box keeps as much face as it can. Then libvips' "attention" idea: detail (the gradient of
    the luminance), colour (saturation) and skin tones (Kovac's RGB rule), each scaled by its mean over the
    image, summed on a copy _ATTENTION_SIDE pixels a side, and the box's sum found for every position at once
    (an integral image). Ties go to the box nearest the centre, so a plain image is cropped in the middle."""
    import numpy as np  # here: see perceptual_hash

    # One reduced copy for both (reduce() reads the image without copying it whole: a 49-megapixel PNG's full
    # RGB copy took 200 MB the decode budget did not count), large enough for the face detector.
    factor = math.isqrt(img.width * img.height // _FACES_PIXELS)
    img = img.reduce(factor) if factor > 1 else img
    small = img.convert("RGB")
    small.thumbnail((_ATTENTION_SIDE, _ATTENTION_SIDE))
    if min(small.size) < 2:  # a thin line of pixels has no gradient, and no box to choose
        return 0.5, 0.5
    rgb = np.asarray(small, dtype=np.float32) / 255
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    rows, columns = np.gradient(grey)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    skin = (red > 0.37) & (green > 0.16) & (blue > 0.08) & (red > green) & (red > blue) & (red - green > 0.06)
    score = (
        _relative(np.hypot(rows, columns))
        + _SATURATION_WEIGHT * _relative(rgb.max(axis=2) - rgb.min(axis=2))
        + _SKIN_WEIGHT * _relative(skin.astype(np.float32))
    )
    faces = np.zeros_like(score)
    for left, top, right, bottom in _faces(img):
        faces[
            round(top * score.shape[0]) : round(bottom * score.shape[0]) + 1,
            round(left * score.shape[1]) : round(right * score.shape[1]) + 1,
        ] = 1
    if faces.any():
        score += _FACES_WEIGHT * faces * (score.sum() / faces.sum())
    height, width = score.shape
    box_w, box_h = max(1, round(share[0] * width)), max(1, round(share[1] * height))
    total = np.pad(score, ((1, 0), (1, 0))).cumsum(axis=0).cumsum(axis=1)
    sums = total[box_h:, box_w:] - total[:-box_h, box_w:] - total[box_h:, :-box_w] + total[:-box_h, :-box_w]
    tops, lefts = np.mgrid[0 : sums.shape[0], 0 : sums.shape[1]]
    off_centre = np.hypot(lefts - (width - box_w) / 2, tops - (height - box_h) / 2)
    best = np.lexsort((off_centre.ravel(), -np.round(sums.ravel(), 3)))[0]
    top, left = divmod(int(best), sums.shape[1])
    return (left + box_w / 2) / width, (top + box_h / 2) / height


# Faces are looked for in a grey copy of at most this many pixels (what the detector costs grows with the
# area): 90,000 found the faces of a 1500 x 500 group photo (each 8% of its width) in 35 ms of CPU, where a
# copy 320 pixels on its long side missed them (the detector's smallest face is 24 pixels).
_FACES_PIXELS = 90_000
_SMALLEST_FACE = 24  # pixels: the cascade's own window
# A smart crop's decode has at least this many pixels (a JPEG drafted, a PNG or WebP shrunk by libvips), so the
# detector's copy is a downscale, as from a full decode: decoded at a 100 px cover's size (300x100), the test's
# group photo showed the detector no face; at _FACES_PIXELS, one of its three; at this, two, as a full decode.
_SMART_DECODE_PIXELS = 2 * _FACES_PIXELS


def _faces(img):
    """The faces OpenCV's frontal face detector (the Haar cascade opencv-python ships: no model downloaded)
    finds in img, as (left, top, right, bottom) fractions of its width and height."""
    import numpy as np

    grey = img.convert("L")
    scale = math.sqrt(_FACES_PIXELS / (grey.width * grey.height))
    if scale < 1:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    if min(grey.size) < _SMALLEST_FACE:
        return []
    found = _face_detector().detectMultiScale(
        np.asarray(grey), scaleFactor=1.2, minNeighbors=5, minSize=(_SMALLEST_FACE,) * 2
    )
    return [(x / grey.width, y / grey.height, (x + w) / grey.width, (y + h) / grey.height) for x, y, w, h in found]


@functools.cache
def _face_detector():
    import cv2  # here: see perceptual_hash (and a worker that never crops smart never loads it)

    cv2.setNumThreads(1)  # a worker is one process a core: OpenCV would otherwise take every core for itself
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def _relative(values):
    """values over their mean (0 where they are all 0): each cue counts alike whatever its scale."""
    mean = float(values.mean())
    return values / mean if mean > 0 else values


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


def _fit_profile(thumb, icc_profile, max_embedded=MAX_EMBEDDED_ICC):
    """(thumb, the profile to embed): a profile over max_embedded bytes is applied instead.

    A thumbnail is a few KB, so embedding a large profile would make it megabytes: the
    resized pixels are converted from the profile to sRGB (what a file without a profile
    means) and nothing is embedded. A profile ImageCms cannot use is dropped, pixels as they are.
    """
    if icc_profile is None or len(icc_profile) <= max_embedded:
        return thumb, icc_profile
    try:
        return ImageCms.profileToProfile(thumb, io.BytesIO(icc_profile), _SRGB, outputMode=thumb.mode), None
    except ImageCms.PyCMSError:
        return thumb, None


def _for_output(thumbs, icc_profile, out_format):
    """(the frames as out_format takes them, the profile to embed): a large profile applied (_fit_profile;
    any profile for gif, which Pillow writes without one), alpha flattened onto white for jpeg, grey with
    alpha made RGBA for gif (whose writer drops LA's alpha), and Pillow's info cleared, which save() falls
    back on (no EXIF or GPS, comments or stale keys)."""
    fitted, profile = [], icc_profile
    for thumb in thumbs:
        thumb, profile = _fit_profile(thumb, icc_profile, 0 if out_format == "gif" else MAX_EMBEDDED_ICC)
        if out_format == "jpeg":
            thumb = _flatten(thumb)
        elif out_format == "gif" and thumb.mode == "LA":
            thumb = thumb.convert("RGBA")
        thumb.info.clear()
        fitted.append(thumb)
    return fitted, profile


def _write_atomically(frames, dest, out_format, icc_profile, animation):
    """Save frames (one: a still; several: an animation, with the save() options in animation) to a hidden
    temporary file beside dest, then os.replace() it onto dest.

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
            options = {**_SAVE_OPTIONS[out_format], **animation}
            if len(frames) > 1:
                options.update(save_all=True, append_images=frames[1:])
                if out_format == "gif":
                    options["disposal"] = 2  # whole frames: each replaces the last, transparent parts too
            frames[0].save(file, _PILLOW_NAMES[out_format], icc_profile=icc_profile, **options)
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
    with _opened(path, max_pixels, max_decode_bytes) as img:
        _check_decode_bytes(img, max_decode_bytes)
        try:
            pixels = _to_8bit(img)
            if pixels.mode in ("L", "LA"):
                return {"luminance": pixels.getchannel("L").histogram()}
            counts = pixels.convert("RGB").histogram()
        except _DECODE_ERRORS as exc:
            raise _read_error(exc, _CORRUPT) from None
    return {"red": counts[:256], "green": counts[256:512], "blue": counts[512:]}

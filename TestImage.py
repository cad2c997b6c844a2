"""Tests for Image.py: the real photos in testdata/ and hostile files generated in tmp_path."""

import dataclasses
import errno
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import pyvips
from PIL import GifImagePlugin, ImageFile, PngImagePlugin, TiffImagePlugin
from PIL import Image as PILImage

import Image
from Image import ImageError
from tests.support import decoded_sizes

TESTDATA = Path(__file__).parent / "testdata"
PHOTOS = {  # name: (width, height, Pillow format, mode)
    "CogentLabs.jpg": (1996, 830, "JPEG", "RGB"),
    "castle_image.jpg": (800, 480, "JPEG", "RGB"),
    "jemma.png": (375, 500, "PNG", "RGB"),
}
LIMIT = 50_000_000
MB = 1024 * 1024
NOT_AN_IMAGE = "The file is not an image Pillow can read (JPEG, PNG, WebP, AVIF, HEIC, JPEG XL, GIF, BMP or TIFF)."
CORRUPT = "The image data is truncated or corrupt."


def image_error(call, *args, **kwargs) -> str:
    """The message of the ImageError call raises, checked to be one sentence without a path."""
    with pytest.raises(ImageError) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert message.endswith(".") and message.count(". ") == 0 and "/" not in message
    return message


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def encode(img, fmt, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width, height) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (CRC recomputed): a tiny decompression bomb."""
    data = bytearray(encode(PILImage.new("L", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data follows signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # CRC covers the type and data
    return bytes(data)


def big_jpeg(tmp_path) -> Path:
    """A 1920x1280 photo, the size a phone upload is reduced from."""
    with PILImage.open(TESTDATA / "CogentLabs.jpg") as photo:
        return write(tmp_path / "big.jpg", encode(photo.resize((1920, 1280)), "JPEG", quality=90))


def opened(path):
    with PILImage.open(path) as img:
        img.load()
        return img


def assert_only(folder: Path, *names):
    """folder holds exactly names: no temporary file (or partial thumbnail) left behind."""
    assert sorted(os.listdir(folder)) == sorted(names)


def halves(mode, left, right, size=(64, 64)):
    """An image whose left half is colour left and right half colour right."""
    img = PILImage.new(mode, size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def psnr(a: PILImage.Image, b: PILImage.Image) -> float:
    """Of two images of one mode, alpha premultiplied (a clear pixel's colour is no pixel's colour)."""
    a, b = (img.convert({"RGBA": "RGBa", "LA": "La"}.get(img.mode, img.mode)) for img in (a, b))
    error = np.mean((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2)
    return 99.0 if error == 0 else 10 * math.log10(255**2 / error)


def thumbnail_psnr(tmp_path, path, box, fmt="png") -> float:
    """The PSNR of path's box x box thumbnail (as PNG, or fmt) against one LANCZOS step from its full decode
    (what a slow, careful resize gives)."""
    made = Image.make_thumbnail(path, tmp_path / "t", box, box, fmt=fmt)
    thumb = opened(tmp_path / "t").convert("RGB")
    assert made["format"] == fmt.upper()
    with PILImage.open(path) as full:
        return psnr(thumb, full.convert("RGB").resize(thumb.size, PILImage.Resampling.LANCZOS))


# --- read_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
def test_read_size_of_real_photos(name):
    width, height, fmt, mode = PHOTOS[name]
    assert Image.read_size(TESTDATA / name, LIMIT) == {"width": width, "height": height, "format": fmt, "mode": mode}


@pytest.mark.parametrize(
    ("fmt", "mode", "name"),
    [("GIF", "P", "a.gif"), ("WEBP", "RGB", "a.webp"), ("BMP", "RGB", "a.bmp"), ("TIFF", "RGB", "a.tif")],
)
def test_read_size_of_other_formats(tmp_path, fmt, mode, name):
    path = write(tmp_path / name, encode(PILImage.new("RGB", (30, 20), "red"), fmt))
    assert Image.read_size(path, LIMIT) == {"width": 30, "height": 20, "format": fmt, "mode": mode}


def test_read_size_reads_only_the_header(tmp_path, monkeypatch):
    # The first half of a real JPEG: its header is intact, so read_size (which never decodes) succeeds.
    data = (TESTDATA / "castle_image.jpg").read_bytes()
    path = write(tmp_path / "half.jpg", data[: len(data) // 2])
    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", lambda self: pytest.fail("read_size decoded pixels"))
    assert Image.read_size(path, LIMIT) == {"width": 800, "height": 480, "format": "JPEG", "mode": "RGB"}
    assert Image.read_size(TESTDATA / "jemma.png", LIMIT)["height"] == 500


# --- hostile files, for both operations -------------------------------------------------------

OPERATIONS = {
    "read_size": lambda path, limit=LIMIT: Image.read_size(path, limit),
    "make_thumbnail": lambda path, limit=LIMIT: Image.make_thumbnail(
        path, path.parent / "out" / "t.png", max_pixels=limit
    ),
}


@pytest.fixture(params=OPERATIONS)
def operation(request):
    return OPERATIONS[request.param]


def test_empty_file(tmp_path, operation):
    # A zero-byte .jpg -> "The file is empty (0 bytes)."
    path = write(tmp_path / "empty.jpg", b"")
    assert image_error(operation, path) == "The file is empty (0 bytes)."


def test_text_named_jpg(tmp_path, operation):
    # A text file named .jpg -> not an image Pillow can read.
    path = write(tmp_path / "notes.jpg", b"Hello, this is not a picture.\n" * 10)
    assert image_error(operation, path) == NOT_AN_IMAGE


@pytest.mark.parametrize("photo", ["castle_image.jpg", "jemma.png"])
def test_truncated_header(tmp_path, operation, photo):
    # The first 20 bytes of a real JPEG / PNG (signature and part of the header) -> not an image.
    path = write(tmp_path / photo, (TESTDATA / photo).read_bytes()[:20])
    assert image_error(operation, path) == NOT_AN_IMAGE


def test_directory(tmp_path, operation):
    # A folder named like an image -> "The path is a folder, not an image file."
    (tmp_path / "folder.jpg").mkdir()
    assert image_error(operation, tmp_path / "folder.jpg") == "The path is a folder, not an image file."


def test_missing_file(tmp_path, operation):
    # A path that does not exist -> "The file does not exist."
    assert image_error(operation, tmp_path / "nowhere.jpg") == "The file does not exist."


def test_unreadable_file(tmp_path, operation, monkeypatch):
    # The OS refuses to open the file (simulated: the tests may run as root) -> its reason, without the path.
    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(PILImage, "open", refuse)
    path = write(tmp_path / "secret.jpg", (TESTDATA / "castle_image.jpg").read_bytes())
    assert image_error(operation, path) == "The file could not be read: Permission denied."


def test_bomb_over_our_limit(tmp_path, operation):
    # A 1x1 PNG declaring 10,000 x 10,000 (above Pillow's warning threshold, below its error)
    # -> our limit's sentence, and no DecompressionBombWarning escapes.
    path = write(tmp_path / "bomb.png", png_declaring(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = image_error(operation, path)
    assert message == "The image has 100,000,000 pixels, more than the limit of 50,000,000 (MAX_IMAGE_PIXELS)."


def test_bomb_over_pillows_limit(tmp_path, operation):
    # A 1x1 PNG declaring 20,000 x 10,000: Pillow's DecompressionBombError fires inside Image.open
    # -> the same sentence as our own check, with the pixel count.
    path = write(tmp_path / "bomb.png", png_declaring(20_000, 10_000))
    assert image_error(operation, path) == (
        "The image has 200,000,000 pixels, more than the limit of 50,000,000 (MAX_IMAGE_PIXELS)."
    )
    # With a limit above Pillow's (2 * PIL.Image.MAX_IMAGE_PIXELS), Pillow's is the one reported.
    assert image_error(operation, path, 10**9) == (
        "The image has 200,000,000 pixels, more than the limit of 178,956,970 (MAX_IMAGE_PIXELS)."
    )


def test_bomb_error_without_pixel_count(tmp_path, operation, monkeypatch):
    # A DecompressionBombError whose message has no pixel count -> the limit alone.
    def explode(*args, **kwargs):
        raise PILImage.DecompressionBombError("too big")

    monkeypatch.setattr(PILImage, "open", explode)
    path = write(tmp_path / "bomb.png", b"x")
    assert image_error(operation, path) == "The image has more pixels than the limit of 50,000,000 (MAX_IMAGE_PIXELS)."


def test_real_photo_over_a_small_limit(operation):
    # castle_image.jpg (800x480) with a limit of 100,000 pixels -> rejected before decoding.
    message = image_error(operation, TESTDATA / "castle_image.jpg", 100_000)
    assert message == "The image has 384,000 pixels, more than the limit of 100,000 (MAX_IMAGE_PIXELS)."


def test_bomb_within_a_large_limit_reads_its_size(tmp_path):
    # The 10,000 x 10,000 header is fine when the limit allows it, and Pillow's warning is still silenced.
    path = write(tmp_path / "big.png", png_declaring(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Image.read_size(path, 100_000_000)["width"] == 10_000


# --- hostile files, decoding --------------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    # The first half of a real JPEG -> "The image data is truncated or corrupt.", and nothing written.
    data = (TESTDATA / "castle_image.jpg").read_bytes()
    path = write(tmp_path / "half.jpg", data[: len(data) // 2])
    (tmp_path / "out").mkdir()
    assert image_error(Image.make_thumbnail, path, tmp_path / "out" / "t.jpg") == CORRUPT
    assert_only(tmp_path / "out")


def test_corrupt_png(tmp_path):
    # A real PNG with 200 bytes of its image data zeroed (bad CRC, broken zlib stream) -> corrupt.
    data = bytearray((TESTDATA / "jemma.png").read_bytes())
    start = data.find(b"IDAT") + 200
    data[start : start + 200] = bytes(200)
    path = write(tmp_path / "broken.png", bytes(data))
    assert image_error(Image.make_thumbnail, path, tmp_path / "t.png") == CORRUPT
    assert_only(tmp_path, "broken.png")


def test_png_declaring_zero_width(tmp_path):
    # A PNG header with width 0 -> not an image (Pillow refuses it when opening).
    path = write(tmp_path / "zero.png", png_declaring(0, 1))
    assert image_error(Image.make_thumbnail, path, tmp_path / "t.png") == NOT_AN_IMAGE


# --- memory one decode takes --------------------------------------------------------------------


def deflate_zeros(size) -> bytes:
    """A zlib stream of size zero bytes in milliseconds: one chunk (up to 4 MiB) compressed with a full
    flush, which makes it independent of what precedes it, repeated; then the Adler-32 of zeros."""
    chunk = math.gcd(size, 1 << 22)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(chunk)) + raw.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()  # an empty final block
    return b"\x78\xda" + block * (size // chunk) + end + struct.pack(">I", (size % 65521) << 16 | 1)


def one_tile_tiff(size, tile, bits=(8, 8, 8), sample_format=1) -> bytes:
    """A little-endian deflate TIFF of size whose single tile (tile = TileWidth, TileLength) is all zeros."""
    data = deflate_zeros(tile[0] * tile[1] * sum(bits) // 8)
    samples = len(bits)
    tags = {  # tag: (TIFF type, 3 SHORT or 4 LONG, values)
        256: (4, [size[0]]),  # ImageWidth
        257: (4, [size[1]]),  # ImageLength
        258: (3, list(bits)),  # BitsPerSample
        259: (3, [8]),  # Compression: deflate
        262: (3, [2 if samples == 3 else 1]),  # PhotometricInterpretation: RGB or black is zero
        277: (3, [samples]),  # SamplesPerPixel
        322: (4, [tile[0]]),  # TileWidth
        323: (4, [tile[1]]),  # TileLength
        324: (4, [0]),  # TileOffsets, set below
        325: (4, [len(data)]),  # TileByteCounts
        339: (3, [sample_format] * samples),  # SampleFormat: 1 unsigned, 3 float
    }

    def packed(kind, values):
        return struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)

    extra_at = 8 + 2 + 12 * len(tags) + 4  # out-of-line values follow the IFD, the tile follows them
    tags[324] = (4, [extra_at + sum(len(packed(*tag)) for tag in tags.values() if len(packed(*tag)) > 4)])
    entries, extra = b"", b""
    for tag, (kind, values) in sorted(tags.items()):
        value = packed(kind, values)
        if len(value) > 4:
            value, extra = struct.pack("<I", extra_at + len(extra)), extra + value
        entries += struct.pack("<HHI", tag, kind, len(values)) + value.ljust(4, b"\0")
    return b"II*\0" + struct.pack("<IH", 8, len(tags)) + entries + struct.pack("<I", 0) + extra + data


DECODING = {
    "make_thumbnail": lambda path, **limit: Image.make_thumbnail(path, path.parent / "out" / "t.png", **limit),
    "open_rgb": lambda path, **limit: Image.open_rgb(path, LIMIT, 256, **limit),
    "histogram": lambda path, **limit: Image.histogram(path, LIMIT, **limit),
}

# Runs one operation in a fresh interpreter and reports its peak RSS (ru_maxrss, KiB on Linux) before and
# after: a high-water mark, so only a process of its own shows what this one call took.
MEASURE = """
import json, resource, sys, time
from pathlib import Path
import Image
call, path = sys.argv[1], Path(sys.argv[2])
calls = {
    "make_thumbnail": lambda: Image.make_thumbnail(path, path.parent / "t.png"),
    "open_rgb": lambda: Image.open_rgb(path, 50_000_000, 256),
    "histogram": lambda: Image.histogram(path, 50_000_000),
}
peak, start, message = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter(), None
try:
    calls[call]()
except Image.ImageError as exc:
    message = str(exc)
rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
print(json.dumps({"message": message, "seconds": time.perf_counter() - start, "rise_mb": rise}))
"""


@pytest.mark.parametrize("call", DECODING)
def test_tiff_tile_larger_than_the_image_is_refused_before_decoding(tmp_path, call):
    # Tried: a 784 KB TIFF, 7000x7000 RGB (under the 50 MP limit) whose one deflate tile is 16384x16384.
    # Pillow hands it to libtiff as one tile covering the image, so img.tile does not show the TIFF tile;
    # libtiff decodes a whole tile at a time. Before: each operation took ~3 s and its peak RSS rose by
    # 962 MB (768 MiB tile buffer + 187 MiB image, RGB stored at 4 bytes a pixel), then wrote a thumbnail.
    # Now: refused from the header in well under a second, peak RSS up by a few MB.
    path = write(tmp_path / "tile.tif", one_tile_tiff((7000, 7000), (16384, 16384)))
    assert path.stat().st_size < 800_000
    with PILImage.open(path) as img:
        assert [(tile.codec_name, tile.extents) for tile in img.tile] == [("libtiff", (0, 0, 7000, 7000))]
        assert (img.tag_v2[322], img.tag_v2[323]) == (16384, 16384)
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, call, str(path)], cwd=Path(__file__).parent, capture_output=True, check=True
    )
    measured = json.loads(run.stdout)
    assert measured["message"] == (
        "Decoding the image would take about 955 MB, more than the limit of 256 MB (MAX_DECODE_MB)."
    )
    assert measured["seconds"] < 1 and measured["rise_mb"] < 50
    assert_only(tmp_path, "tile.tif")


@pytest.mark.parametrize(
    ("bits", "sample_format", "mode", "megabytes"),
    [((8, 8, 8), 1, "RGB", 955), ((16,), 1, "I;16", 606), ((32,), 3, "F", 1211)],
)
def test_tiff_estimate_counts_bytes_per_pixel(tmp_path, bits, sample_format, mode, megabytes):
    # Tried: the same 7000x7000 image with a 16384x16384 tile at 8-bit RGB, 16-bit grey and 32-bit float.
    # Got: the tile at the file's bits per pixel (3, 2, 4 bytes) plus the image at Pillow's (4, 2, 4), so
    # 768 + 187, 512 + 94 and 1024 + 187 MiB; nothing decoded.
    path = write(tmp_path / "tile.tif", one_tile_tiff((7000, 7000), (16384, 16384), bits, sample_format))
    assert Image.read_size(path, LIMIT)["mode"] == mode
    for call in DECODING.values():
        assert image_error(call, path) == (
            f"Decoding the image would take about {megabytes:,} MB, more than the limit of 256 MB (MAX_DECODE_MB)."
        )


def test_tiff_tile_larger_than_a_small_image_still_decodes(tmp_path):
    # Tried: 100x60 RGB in one 128x128 deflate tile of zeros (a tile past the image is legal).
    # Got: a black 100x60 thumbnail: the estimate (16 + 48 KB) is far below the limit.
    path = write(tmp_path / "small.tif", one_tile_tiff((100, 60), (128, 128)))
    assert Image.make_thumbnail(path, tmp_path / "t.png", 200, 200) == {"width": 100, "height": 60, "format": "PNG"}
    assert opened(tmp_path / "t.png").getextrema() == ((0, 0), (0, 0), (0, 0))
    assert Image.histogram(path, LIMIT)["red"][0] == 6000


@pytest.mark.parametrize(
    ("mode", "fmt", "megabytes"),
    [("L", "PNG", None), ("I;16", "PNG", 3), ("I;16", "TIFF", 3), ("F", "TIFF", 6), ("RGB", "PNG", 6)],
)
def test_estimate_counts_the_bytes_per_pixel_of_the_mode(tmp_path, mode, fmt, megabytes):
    # Tried: 1200x1200 images (1.44 million pixels each) under a limit of 2 MiB. Got: 8-bit grey (1 byte a
    # pixel, 1.4 MiB) decodes; 16-bit grey (2 bytes, 2.8 MiB) and float or RGB (4 bytes: Pillow stores RGB
    # as RGBX, 5.5 MiB) are refused, whether PNG, libtiff (deflate) or Pillow's raw TIFF decoder reads them.
    options = {"compression": "tiff_deflate"} if (mode, fmt) == ("I;16", "TIFF") else {}
    path = write(tmp_path / f"a.{fmt.lower()}", encode(PILImage.new(mode, (1200, 1200)), fmt, **options))
    assert opened(path).mode == mode
    if megabytes is None:
        assert Image.histogram(path, LIMIT, max_decode_bytes=2 * MB)["luminance"][0] == 1200 * 1200
        return
    for call in DECODING.values():
        assert image_error(call, path, max_decode_bytes=2 * MB) == (
            f"Decoding the image would take about {megabytes} MB, more than the limit of 2 MB (MAX_DECODE_MB)."
        )


@pytest.mark.parametrize("name", PHOTOS)
def test_real_photos_decode_within_the_default_limit(tmp_path, name):
    assert Image.make_thumbnail(TESTDATA / name, tmp_path / "t.png", fmt="png")["format"] == "PNG"
    assert Image.open_rgb(TESTDATA / name, LIMIT, 10_000).size == PHOTOS[name][:2]
    assert len(Image.histogram(TESTDATA / name, LIMIT)["red"]) == 256


def test_a_tiny_limit_refuses_a_real_photo_after_draft(tmp_path):
    # Tried: CogentLabs.jpg (1996x830, baseline) under a limit of 1 MiB. Got: a 100x100 thumbnail is fine
    # (draft() decodes it at 1/8, 250x104: 0.1 MB), but the full decode (6.3 MiB) a histogram, open_rgb
    # asked for 1000 px or a thumbnail too large to draft need is refused, and nothing is written.
    photo = TESTDATA / "CogentLabs.jpg"
    assert Image.make_thumbnail(photo, tmp_path / "t.jpg", max_decode_bytes=MB)["width"] == 100
    sentence = "Decoding the image would take about 7 MB, more than the limit of 1 MB (MAX_DECODE_MB)."
    assert image_error(Image.histogram, photo, LIMIT, max_decode_bytes=MB) == sentence
    assert image_error(Image.open_rgb, photo, LIMIT, 1000, max_decode_bytes=MB) == sentence
    assert image_error(Image.make_thumbnail, photo, tmp_path / "u.jpg", 2000, 2000, max_decode_bytes=MB) == sentence
    assert_only(tmp_path, "t.jpg")


def test_progressive_jpeg_counts_its_coefficients_at_full_size(tmp_path, monkeypatch):
    # Tried: a 2000x2000 JPEG, 4:4:4, baseline and progressive, to a 100x100 thumbnail under 8 MiB.
    # Got: baseline is decoded at 1/8 (250x250, 0.25 MB); progressive is refused: libjpeg holds all its
    # DCT coefficients (3 components x 2 bytes a pixel, 23 MiB) at full size whatever draft() chose.
    source = halves("RGB", "red", "blue", (2000, 2000))
    baseline = write(tmp_path / "baseline.jpg", encode(source, "JPEG", subsampling=0))
    progressive = write(tmp_path / "progressive.jpg", encode(source, "JPEG", subsampling=0, progressive=True))
    sizes = decoded_sizes(monkeypatch)
    assert Image.make_thumbnail(baseline, tmp_path / "t.jpg", max_decode_bytes=8 * MB)["width"] == 100
    assert image_error(Image.make_thumbnail, progressive, tmp_path / "u.jpg", max_decode_bytes=8 * MB) == (
        "Decoding the image would take about 24 MB, more than the limit of 8 MB (MAX_DECODE_MB)."
    )
    assert sizes == [(250, 250)]  # the progressive one was never decoded
    assert Image.make_thumbnail(progressive, tmp_path / "u.jpg")["width"] == 100  # fine under the default


def test_webp_counts_its_decoders_canvases(tmp_path):
    # Tried: 1000x1000 as PNG and as WebP under 8 MiB. Got: the PNG (4 MB) decodes; the WebP is refused,
    # as libwebp decodes through two RGBA canvases and Pillow copies the frame: 16 bytes a pixel in all.
    source = PILImage.new("RGB", (1000, 1000), "red")
    png = write(tmp_path / "a.png", encode(source, "PNG"))
    webp = write(tmp_path / "a.webp", encode(source, "WEBP"))
    assert Image.histogram(png, LIMIT, max_decode_bytes=8 * MB)["red"][255] == 1_000_000
    assert image_error(Image.histogram, webp, LIMIT, max_decode_bytes=8 * MB) == (
        "Decoding the image would take about 16 MB, more than the limit of 8 MB (MAX_DECODE_MB)."
    )


# --- fits and sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fit", "box", "expected"),
    [
        ("castle_image.jpg", "contain", (100, 100), (100, 60)),
        ("castle_image.jpg", "cover", (100, 100), (100, 100)),
        ("castle_image.jpg", "stretch", (100, 50), (100, 50)),
        ("CogentLabs.jpg", "contain", (100, 100), (100, 42)),
        ("CogentLabs.jpg", "cover", (150, 60), (150, 60)),
        ("CogentLabs.jpg", "stretch", (64, 256), (64, 256)),
        ("jemma.png", "contain", (100, 100), (75, 100)),
        ("jemma.png", "contain", (300, 100), (75, 100)),
        ("jemma.png", "cover", (120, 80), (120, 80)),
        ("jemma.png", "stretch", (10, 10), (10, 10)),
        ("castle_image.jpg", "contain", (2000, 2000), (800, 480)),  # contain never upscales
        ("jemma.png", "cover", (600, 600), (600, 600)),  # cover and stretch fill exactly
        ("jemma.png", "stretch", (600, 240), (600, 240)),
    ],
)
def test_fits_give_exact_sizes(tmp_path, name, fit, box, expected):
    for fmt in Image.FORMATS:
        dest = tmp_path / f"t.{fmt}"
        result = Image.make_thumbnail(TESTDATA / name, dest, *box, fit=fit, fmt=fmt)
        assert result == {"width": expected[0], "height": expected[1], "format": fmt.upper()}
        written = opened(dest)
        assert (written.size, written.format) == (expected, fmt.upper())


def test_default_is_a_100x100_contain_in_the_source_format(tmp_path):
    result = Image.make_thumbnail(TESTDATA / "CogentLabs.jpg", tmp_path / "t.jpg")
    assert result == {"width": 100, "height": 42, "format": "JPEG"}


def test_cover_crops_the_centre(tmp_path):
    # Thirds red | green | blue, 300x100: cover to 50x50 keeps only the green middle.
    source = PILImage.new("RGB", (300, 100), "blue")
    source.paste("red", (0, 0, 100, 100))
    source.paste((0, 255, 0), (100, 0, 200, 100))
    path = write(tmp_path / "thirds.png", encode(source, "PNG"))
    Image.make_thumbnail(path, tmp_path / "t.png", 50, 50, fit="cover")
    thumb = opened(tmp_path / "t.png")
    for x in (3, 25, 46):
        red, green, blue = thumb.getpixel((x, 25))
        assert green > 230 and red < 25 and blue < 25


def test_stretch_ignores_the_aspect_ratio(tmp_path):
    # Left half red, right half blue, stretched to 10x80: the left column stays red, the right blue.
    path = write(tmp_path / "halves.png", encode(halves("RGB", "red", "blue"), "PNG"))
    Image.make_thumbnail(path, tmp_path / "t.png", 10, 80, fit="stretch")
    thumb = opened(tmp_path / "t.png")
    assert thumb.getpixel((0, 40)) == (255, 0, 0) and thumb.getpixel((9, 40)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("box", "fit", "decoded"),
    [
        (100, "contain", (240, 160)),
        (100, "cover", (240, 160)),  # the 150x100 crop of 240x160 still holds the output
        (100, "stretch", (240, 160)),
        (256, "contain", (480, 320)),
        (512, "contain", (960, 640)),
        (512, "cover", (960, 640)),  # 768x512 of it is cropped
        (1024, "contain", None),  # 960 would be less than the output: libvips decodes it whole and shrinks it
        (1024, "cover", None),
    ],
)
def test_jpeg_is_decoded_as_small_as_keeps_the_output_size(tmp_path, monkeypatch, box, fit, decoded):
    """draft(): a 1920x1280 JPEG is decoded at the deepest DCT scale (1/2, 1/4, 1/8) that leaves at least the
    output's size. Before, it asked for twice the output: a 512 px box decoded the whole 1920x1280, and the
    thumbnail cost 2.2 times the CPU for 0.1 dB more (bench/engine.py). Where no scale does, libvips decodes it
    and shrinks it in one streaming pass: 1.7x less CPU than Pillow's whole decode and resize."""
    path = big_jpeg(tmp_path)
    sizes, asked = decoded_sizes(monkeypatch), libvips_thumbnails(monkeypatch)
    made = Image.make_thumbnail(path, tmp_path / "t.jpg", box, box, fit=fit)
    assert max(made["width"], made["height"]) == box
    assert sizes == ([decoded] if decoded else [])
    assert len(asked) == (0 if decoded else 1)


@pytest.mark.parametrize(("box", "floor_db"), [(100, 37.2), (256, 39.8), (512, 41.7)])
def test_an_avif_thumbnail_is_resampled_with_lanczos(tmp_path, box, floor_db):
    """AVIF keeps the detail a softer resample loses, so its final resample is LANCZOS (Image._RESAMPLING).
    Tried: the drafted photo to AVIF at three sizes, against one LANCZOS step from the full decode. Got (this
    photo): 38.3, 41.2 and 43.8 dB; with Pillow's default BICUBIC it was 36.1, 38.8 and 40.7, under each floor."""
    assert thumbnail_psnr(tmp_path, big_jpeg(tmp_path), box, "avif") > floor_db


@pytest.mark.parametrize("box", [100, 256, 512, 1024])
def test_a_drafted_thumbnail_keeps_the_photos_pixels(tmp_path, box):
    """Against one LANCZOS step from the full decode (what a slow, careful resize gives), the thumbnail made
    from the reduced decode stays above 38 dB of PSNR at every size (measured 41-46 dB on this photo)."""
    assert thumbnail_psnr(tmp_path, big_jpeg(tmp_path), box) > 38


# --- EXIF orientation ---------------------------------------------------------------------------


def rotated_source(tmp_path, fmt, size=(300, 200)) -> Path:
    """A landscape image, left half red and right half blue, tagged EXIF orientation 6 (rotate 90 clockwise)."""
    exif = PILImage.Exif()
    exif[0x0112] = 6
    source = halves("RGB", "red", "blue", size)
    return write(tmp_path / f"rotated.{fmt}", encode(source, fmt, exif=exif.tobytes()))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_6_gives_portrait(tmp_path, fmt):
    path = rotated_source(tmp_path, fmt)
    assert Image.read_size(path, LIMIT)["width"] == 300  # read_size reports the stored size
    result = Image.make_thumbnail(path, tmp_path / "t.png", 100, 100, fmt="png")
    assert (result["width"], result["height"]) == (67, 100)
    thumb = opened(tmp_path / "t.png")
    red, _, blue = thumb.getpixel((33, 10))  # the stored left half is now on top
    assert red > 200 and blue < 50
    red, _, blue = thumb.getpixel((33, 90))
    assert blue > 200 and red < 50


def test_exif_orientation_6_large_photo_all_fits(tmp_path):
    # The brief's case: a 3000x2000 JPEG with orientation 6 gives a portrait thumbnail.
    path = rotated_source(tmp_path, "JPEG", (3000, 2000))
    assert Image.make_thumbnail(path, tmp_path / "a.jpg", 100, 100)["height"] == 100
    assert opened(tmp_path / "a.jpg").size == (67, 100)
    assert opened(tmp_path / "a.jpg").getexif().get(0x0112) is None  # no orientation left to apply twice
    assert Image.make_thumbnail(path, tmp_path / "b.jpg", 200, 100)["width"] == 67
    assert Image.make_thumbnail(path, tmp_path / "c.jpg", 120, 80, fit="cover")["width"] == 120
    assert Image.make_thumbnail(path, tmp_path / "d.jpg", 30, 90, fit="stretch")["height"] == 90


def test_exif_rotated_jpeg_is_drafted_for_its_upright_shape(tmp_path, monkeypatch):
    # Stored 3000x2000, shown 2000x3000: a 300x60 cover needs 300 px across the shown width, i.e.
    # 300 of the stored height, so 1/4 (750x500); sizing the draft unrotated would pick 1/8 (375x250).
    path = rotated_source(tmp_path, "JPEG", (3000, 2000))
    sizes = decoded_sizes(monkeypatch)
    assert Image.make_thumbnail(path, tmp_path / "t.jpg", 300, 60, fit="cover")["width"] == 300
    assert sizes == [(750, 500)]


# --- modes and transparency ---------------------------------------------------------------------


def mode_source(tmp_path, mode) -> Path:
    """A 40x30 image in mode, saved in a format that keeps the mode."""
    img = {
        "1": lambda: halves("1", 1, 0, (40, 30)),
        "L": lambda: halves("L", 200, 50, (40, 30)),
        "LA": lambda: halves("LA", (200, 255), (0, 0), (40, 30)),
        "P": lambda: halves("RGB", "red", "blue", (40, 30)).convert("P"),
        "RGB": lambda: halves("RGB", "red", "blue", (40, 30)),
        "RGBA": lambda: halves("RGBA", (255, 0, 0, 255), (0, 0, 0, 0), (40, 30)),
        "CMYK": lambda: halves("CMYK", (0, 255, 255, 0), (0, 0, 0, 255), (40, 30)),
        "I;16": lambda: halves("I;16", 60000, 1000, (40, 30)),
        "I;16B": lambda: halves("I;16B", 60000, 1000, (40, 30)),
        "I": lambda: halves("I", 60000, 1000, (40, 30)),
        "F": lambda: halves("F", 0.9, 0.1, (40, 30)),
    }[mode]()
    fmt = {"CMYK": "JPEG", "I;16B": "TIFF", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    path = write(tmp_path / f"source.{fmt.lower()}", encode(img, fmt))
    assert opened(path).mode == mode
    return path


GREY_MODES = {"1", "L", "LA", "I;16", "I;16B", "I", "F"}


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I", "F"])
@pytest.mark.parametrize("fmt", Image.FORMATS)
def test_every_source_mode_into_every_format(tmp_path, mode, fmt):
    alpha = mode in ("LA", "RGBA")
    Image.make_thumbnail(mode_source(tmp_path, mode), tmp_path / "t", 20, 15, fmt=fmt)
    thumb = opened(tmp_path / "t")
    if fmt == "jpeg":
        expected = "L" if mode in GREY_MODES else "RGB"
    elif fmt == "png":
        expected = ("LA" if alpha else "L") if mode in GREY_MODES else ("RGBA" if alpha else "RGB")
    elif fmt == "avif":  # AVIF holds grey (4:0:0), but grey with alpha comes back RGBA
        expected = "RGBA" if alpha else ("L" if mode in GREY_MODES else "RGB")
    elif fmt == "gif":  # a palette of at most 256 colours, one of them transparent
        expected = "P"
    else:  # WebP holds only RGB and RGBA
        expected = "RGBA" if alpha else "RGB"
    assert thumb.mode == expected
    # The left half was always brighter (red, 200 or 60000) than the right one: no clipping to white.
    grey = thumb.convert("L")
    if not alpha:
        assert grey.getpixel((2, 7)) > grey.getpixel((17, 7)) + 20


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF")])
def test_16_bit_gradient_keeps_its_spread(tmp_path, mode, fmt):
    # A horizontal 0..65535 gradient: convert("L") would clip everything above 255 to white.
    source = PILImage.new(mode, (512, 8))
    source.putdata([x * 128 for _ in range(8) for x in range(512)])
    path = write(tmp_path / f"gradient.{fmt.lower()}", encode(source, fmt))
    Image.make_thumbnail(path, tmp_path / "t.png", 256, 4, fit="stretch")
    row = [opened(tmp_path / "t.png").getpixel((x, 2)) for x in range(256)]
    assert row[0] <= 2 and row[-1] >= 250 and 120 <= row[128] <= 135
    assert len(set(row)) > 200 and row == sorted(row)


def test_float_image_in_0_to_1_is_scaled(tmp_path):
    source = PILImage.new("F", (256, 4))
    source.putdata([x / 255 for _ in range(4) for x in range(256)])
    path = write(tmp_path / "float.tif", encode(source, "TIFF"))
    Image.make_thumbnail(path, tmp_path / "t.png", 256, 4, fit="stretch")
    row = [opened(tmp_path / "t.png").getpixel((x, 2)) for x in range(256)]
    assert row[0] <= 1 and row[-1] >= 254 and len(set(row)) > 200


def transparent_source(tmp_path, kind) -> Path:
    """64x64: an opaque left half (red, or grey 100) and a fully transparent right half of colour black."""
    if kind == "LA":
        return write(tmp_path / "la.png", encode(halves("LA", (100, 255), (0, 0)), "PNG"))
    if kind == "RGBA.webp":
        return write(
            tmp_path / "rgba.webp", encode(halves("RGBA", (255, 0, 0, 255), (0, 0, 0, 0)), "WEBP", lossless=True)
        )
    if kind == "RGBA":
        return write(tmp_path / "rgba.png", encode(halves("RGBA", (255, 0, 0, 255), (0, 0, 0, 0)), "PNG"))
    palette = halves("P", 0, 1)
    palette.putpalette([255, 0, 0, 0, 0, 0])
    fmt = "GIF" if kind == "P.gif" else "PNG"
    return write(tmp_path / f"p.{fmt.lower()}", encode(palette, fmt, transparency=1))


@pytest.mark.parametrize("kind", ["RGBA", "RGBA.webp", "LA", "P.png", "P.gif"])
@pytest.mark.parametrize("fmt", Image.FORMATS)
def test_transparency_kept_or_flattened_on_white(tmp_path, kind, fmt):
    path = transparent_source(tmp_path, kind)
    Image.make_thumbnail(path, tmp_path / "t", 32, 32, fmt=fmt)
    thumb = opened(tmp_path / "t").convert("RGBA")
    opaque = (100, 100, 100) if kind == "LA" else (255, 0, 0)
    left, right = thumb.getpixel((4, 16)), thumb.getpixel((28, 16))
    # AVIF's alpha is coded lossy, at the image's quality (Pillow sets no other): opaque may come back as 254.
    assert all(abs(a - b) <= 8 for a, b in zip(left[:3], opaque)) and left[3] >= (250 if fmt == "avif" else 255)
    if fmt == "jpeg":  # no alpha: composited on white, not on the hidden black
        assert min(right[:3]) >= 245 and right[3] == 255
    else:
        assert right[3] == 0


def test_palette_without_transparency_is_resampled_not_nearest(tmp_path):
    # A P image with a hard red|blue edge: converted before resizing, so the edge gets blended pixels.
    path = write(tmp_path / "p.png", encode(halves("RGB", "red", "blue", (40, 40)).convert("P"), "PNG"))
    Image.make_thumbnail(path, tmp_path / "t.png", 15, 15, fmt="png")
    thumb = opened(tmp_path / "t.png")
    assert thumb.mode == "RGB" and any(0 < thumb.getpixel((x, 7))[0] < 255 for x in range(15))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    # A CMYK JPEG in pure "red" (0% cyan, 100% magenta and yellow) -> an RGB thumbnail that is red.
    path = write(tmp_path / "cmyk.jpg", encode(PILImage.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG"))
    assert Image.make_thumbnail(path, tmp_path / "t.jpg", 32, 32)["format"] == "JPEG"
    red, green, blue = opened(tmp_path / "t.jpg").getpixel((16, 12))
    assert red > 240 and green < 15 and blue < 15


# --- animations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_uses_its_first_frame(tmp_path, fmt):
    frames = [PILImage.new("RGB", (48, 48), colour) for colour in ("red", "lime", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    path = write(tmp_path / f"anim.{fmt.lower()}", buffer.getvalue())
    with PILImage.open(path) as animation:
        assert animation.n_frames == 3
    Image.make_thumbnail(path, tmp_path / "t.png", 24, 24, fmt="png")
    red, green, blue = opened(tmp_path / "t.png").getpixel((12, 12))
    assert red > 245 and green < 10 and blue < 10


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_many_frames_only_the_first_is_read(tmp_path, monkeypatch, fmt):
    # Tried: a 300-frame GIF and a 300-page TIFF (red first, then green and blue by turns) through each
    # operation (a thumbnail with frames=first), with n_frames (and GIF's is_animated) made to fail and every
    # seek recorded. Got: the red first frame, one decode each, no frame but 0 ever sought: the other 299 are
    # neither decoded nor counted.
    frames = [PILImage.new("RGB", (64, 64), colour) for colour in ["red"] + ["lime", "blue"] * 149 + ["lime"]]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:])
    path = write(tmp_path / f"frames.{fmt.lower()}", buffer.getvalue())
    with PILImage.open(path) as img:
        assert img.n_frames == 300
    plugin = GifImagePlugin.GifImageFile if fmt == "GIF" else TiffImagePlugin.TiffImageFile
    for name in ("n_frames", "is_animated") if fmt == "GIF" else ("n_frames",):  # TIFF sets is_animated itself
        monkeypatch.setattr(plugin, name, property(lambda img: pytest.fail("frames were counted")))
    sought, seek = [], plugin._seek
    monkeypatch.setattr(plugin, "_seek", lambda img, frame, *args: sought.append(frame) or seek(img, frame, *args))
    sizes = decoded_sizes(monkeypatch)
    Image.make_thumbnail(path, tmp_path / "t.png", 32, 32, frames="first")
    assert Image.open_rgb(path, LIMIT, 64).getpixel((0, 0)) == (255, 0, 0)
    assert Image.histogram(path, LIMIT)["red"][255] == 64 * 64
    assert sizes == [(64, 64)] * 3 and set(sought) == {0}
    assert opened(tmp_path / "t.png").convert("RGB").getpixel((16, 16)) == (255, 0, 0)


# --- formats and extensions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src_format", "fmt", "extension"),
    [
        ("JPEG", None, ".jpg"),
        ("MPO", None, ".jpg"),  # what Pillow calls many camera JPEGs
        ("PNG", None, ".png"),
        ("WEBP", None, ".webp"),
        ("GIF", None, ".png"),
        ("TIFF", None, ".png"),
        ("BMP", None, ".png"),
        (None, None, ".png"),
        ("GIF", "jpeg", ".jpg"),
        ("JPEG", "png", ".png"),
        ("PNG", "webp", ".webp"),
        (None, "jpeg", ".jpg"),
    ],
)
def test_output_extension(src_format, fmt, extension):
    assert Image.output_extension(src_format, fmt) == extension


@pytest.mark.parametrize(
    ("name", "pil_format"), [("a.gif", "GIF"), ("a.bmp", "BMP"), ("a.webp", "WEBP"), ("a.jpg", "JPEG")]
)
def test_output_extension_matches_what_is_written(tmp_path, name, pil_format):
    path = write(tmp_path / name, encode(PILImage.new("RGB", (30, 20), "red"), pil_format))
    extension = Image.output_extension(Image.read_size(path, LIMIT)["format"], None)
    result = Image.make_thumbnail(path, tmp_path / f"t{extension}")
    assert opened(tmp_path / f"t{extension}").format == result["format"]
    assert Image.output_extension(result["format"], None) == extension


def test_bad_arguments_are_value_errors(tmp_path):
    photo = TESTDATA / "castle_image.jpg"
    with pytest.raises(ValueError, match="fmt must be"):
        Image.output_extension("JPEG", "tiff")
    with pytest.raises(ValueError, match="fmt must be"):
        Image.make_thumbnail(photo, tmp_path / "t.tif", fmt="tiff")
    with pytest.raises(ValueError, match="frames must be"):
        Image.make_thumbnail(photo, tmp_path / "t.jpg", frames="some")
    with pytest.raises(ValueError, match="fit must be"):
        Image.make_thumbnail(photo, tmp_path / "t.jpg", fit="fill")
    with pytest.raises(ValueError, match="at least 1"):
        Image.make_thumbnail(photo, tmp_path / "t.jpg", 0, 100)
    assert_only(tmp_path)


def test_constants():
    assert Image.FORMATS == ("jpeg", "png", "webp", "avif", "gif")
    assert Image.IMAGE_EXTENSIONS == {
        *(".jpg", ".jpeg", ".png", ".webp", ".avif", ".heic", ".heif", ".jxl", ".gif", ".bmp", ".tif", ".tiff")
    }


# --- AVIF ----------------------------------------------------------------------------------------


def test_avif_in_and_out(tmp_path):
    """AVIF was neither read nor written. A photo saved as AVIF is sized from its header, thumbnailed into an
    AVIF (its format family kept by default) whose pixels match the photo's, and format=avif turns a JPEG
    into one."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        photo.save(tmp_path / "castle.avif", quality=90)
        reference = photo.convert("RGB").resize((100, 60), PILImage.Resampling.LANCZOS)
    assert Image.read_size(tmp_path / "castle.avif", LIMIT) == {
        "width": 800,
        "height": 480,
        "format": "AVIF",
        "mode": "RGB",
    }
    made = Image.make_thumbnail(tmp_path / "castle.avif", lambda ext: str(tmp_path / f"t{ext}"), 100, 100)
    assert made == {"width": 100, "height": 60, "format": "AVIF"}
    thumb = np.asarray(opened(tmp_path / "t.avif").convert("RGB"), dtype=float)
    assert 10 * np.log10(255**2 / np.mean((thumb - np.asarray(reference, dtype=float)) ** 2)) > 28
    made = Image.make_thumbnail(TESTDATA / "castle_image.jpg", tmp_path / "j.avif", 64, 64, fmt="avif")
    assert made["format"] == "AVIF" and opened(tmp_path / "j.avif").format == "AVIF"


def test_a_truncated_avif_is_corrupt_and_a_huge_one_is_refused_before_decoding(tmp_path):
    """The hostile cases of the new format: half an AVIF file is "corrupt" (nothing written); an AVIF whose
    header claims more pixels than the limit is refused by the limit, before any pixel is decoded."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        photo.save(tmp_path / "castle.avif")
        PILImage.new("RGB", (3000, 2000), "teal").save(tmp_path / "big.avif", speed=10)
    data = (tmp_path / "castle.avif").read_bytes()
    half = write(tmp_path / "half.avif", data[: len(data) // 2])
    (tmp_path / "out").mkdir()
    assert image_error(Image.make_thumbnail, half, tmp_path / "out" / "t.avif") in (CORRUPT, NOT_AN_IMAGE)
    assert_only(tmp_path / "out")
    refused = image_error(
        Image.make_thumbnail, tmp_path / "big.avif", tmp_path / "out" / "b.avif", max_pixels=1_000_000
    )
    assert "pixels" in refused
    assert_only(tmp_path / "out")


# --- names, atomic writes, idempotency ----------------------------------------------------------


def test_unicode_file_names(tmp_path):
    src = tmp_path / "café 東京.jpg"
    shutil.copy(TESTDATA / "castle_image.jpg", src)
    dest = tmp_path / "縮略圖 ü" / "café 東京.webp"
    assert Image.read_size(src, LIMIT)["width"] == 800
    assert Image.make_thumbnail(src, dest, fmt="webp") == {"width": 100, "height": 60, "format": "WEBP"}
    assert opened(dest).size == (100, 60)


def test_write_creates_folders_and_leaves_no_temporary_file(tmp_path):
    dest = tmp_path / "a" / "b" / "t.jpg"
    Image.make_thumbnail(str(TESTDATA / "castle_image.jpg"), str(dest))  # str paths work as well as Path
    assert_only(dest.parent, "t.jpg")


def test_failed_write_leaves_no_temporary_file_and_the_old_thumbnail(tmp_path, monkeypatch):
    # The disk fills up half-way through saving -> "could not be written: No space left on device.";
    # the previous thumbnail at dest is untouched and the partial temporary file is removed.
    dest = write(tmp_path / "t.jpg", b"previous thumbnail")

    def fill_disk(img, fp, *args, **kwargs):
        fp.write(b"\xff\xd8 partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(PILImage.Image, "save", fill_disk)
    message = image_error(Image.make_thumbnail, TESTDATA / "castle_image.jpg", dest)
    assert message == "The thumbnail could not be written: No space left on device."
    assert dest.read_bytes() == b"previous thumbnail"
    assert_only(tmp_path, "t.jpg")


def test_failed_write_leaves_no_dest(tmp_path, monkeypatch):
    # Same failure with no previous thumbnail -> no dest at all.
    def fill_disk(img, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", fill_disk)
    image_error(Image.make_thumbnail, TESTDATA / "castle_image.jpg", tmp_path / "t.jpg")
    assert_only(tmp_path)


def test_unexpected_error_while_saving_removes_the_temporary_file(tmp_path, monkeypatch):
    # Not an OSError (here a bug inside Pillow's encoder): it propagates as is, still cleaned up.
    def crash(img, fp, *args, **kwargs):
        fp.write(b"partial")
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(PILImage.Image, "save", crash)
    with pytest.raises(RuntimeError, match="encoder bug"):
        Image.make_thumbnail(TESTDATA / "castle_image.jpg", tmp_path / "t.jpg")
    assert_only(tmp_path)


def test_dest_is_a_folder(tmp_path):
    # dest names an existing folder -> os.replace fails: "could not be written: Is a directory."
    (tmp_path / "t.jpg").mkdir()
    message = image_error(Image.make_thumbnail, TESTDATA / "castle_image.jpg", tmp_path / "t.jpg")
    assert message == "The thumbnail could not be written: Is a directory."
    assert_only(tmp_path, "t.jpg")


def test_dest_folder_is_a_file(tmp_path):
    # dest's parent is a file -> the folder cannot be created: "could not be written: File exists."
    write(tmp_path / "out", b"")
    message = image_error(Image.make_thumbnail, TESTDATA / "castle_image.jpg", tmp_path / "out" / "t.jpg")
    assert message == "The thumbnail could not be written: File exists."
    assert_only(tmp_path, "out")


@pytest.mark.parametrize("fmt", Image.FORMATS)
@pytest.mark.parametrize("fit", Image.FITS)
def test_idempotent(tmp_path, fmt, fit):
    first, second = tmp_path / "first", tmp_path / "second"
    Image.make_thumbnail(TESTDATA / "CogentLabs.jpg", first, 120, 90, fit=fit, fmt=fmt)
    Image.make_thumbnail(TESTDATA / "CogentLabs.jpg", second, 120, 90, fit=fit, fmt=fmt)
    Image.make_thumbnail(TESTDATA / "CogentLabs.jpg", second, 120, 90, fit=fit, fmt=fmt)  # overwrite
    assert first.read_bytes() == second.read_bytes()
    assert_only(tmp_path, "first", "second")


def test_metadata_is_stripped_but_the_icc_profile_kept(tmp_path):
    # CogentLabs.jpg carries an ICC profile; the EXIF block (camera, GPS) and the JPEG comment
    # of the source must not reach the thumbnail, the colour profile must.
    with PILImage.open(TESTDATA / "CogentLabs.jpg") as photo:
        icc = photo.info["icc_profile"]
        exif = PILImage.Exif()
        exif[0x010F] = "Camera maker"
        source = encode(photo, "JPEG", exif=exif.tobytes(), icc_profile=icc, comment=b"private note")
    path = write(tmp_path / "photo.jpg", source)
    for fmt in Image.FORMATS:
        Image.make_thumbnail(path, tmp_path / f"t.{fmt}", fmt=fmt)
        thumb = opened(tmp_path / f"t.{fmt}")
        assert thumb.info.get("icc_profile") == (None if fmt == "gif" else icc)  # GIF: applied to the pixels
        assert not thumb.getexif() and "comment" not in thumb.info


# --- ICC profiles -------------------------------------------------------------------------------


def icc_swapping_red_and_blue(padding=0) -> bytes:
    """A valid ICC v2 RGB display profile (matrix and gamma 2.2 curves) whose red and blue colorants are
    sRGB's blue and red, so converting it to sRGB turns red into blue; padding adds a private tag of that
    many bytes, as large profiles carry (ImageCms ignores it)."""

    def number(value):  # s15Fixed16Number
        return struct.pack(">i", round(value * 65536))

    def xyz(x, y, z):
        return b"XYZ \0\0\0\0" + number(x) + number(y) + number(z)

    name = b"swapped red and blue\0"
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233)  # one entry: gamma 2.2 in u8Fixed8
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name + bytes(78)),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),  # D50
        (b"cprt", b"text\0\0\0\0none\0"),
        (b"rXYZ", xyz(0.1431, 0.0606, 0.7141)),  # sRGB's blue, adapted to D50
        (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.4361, 0.2225, 0.0139)),  # sRGB's red
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ] + ([(b"zpad", b"data\0\0\0\0" + struct.pack(">I", 1) + bytes(padding))] if padding else [])
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)  # tags start on 4-byte boundaries
        table += signature + struct.pack(">II", 128 + 4 + 12 * len(tags) + len(data), len(body))
        data += body
    header = struct.pack(">I4xI", 128 + len(table) + len(data), 0x02100000) + b"mntrRGB XYZ " + bytes(12)
    header += b"acsp" + bytes(28) + number(0.9642) + number(1.0) + number(0.8249)  # PCS illuminant, D50
    return header.ljust(128, b"\0") + table + data


def near(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def test_large_junk_icc_profile_is_dropped(tmp_path):
    # Tried: castle_image.jpg re-encoded with 4 MiB of random bytes as its ICC profile, to 64x64 thumbnails.
    # Before: each thumbnail was 4.2 MB (jpeg 4,197,179, png 4,201,209, webp 4,195,618 bytes) carrying the
    # profile; Pillow could not even reopen the png (iCCP over MAX_TEXT_CHUNK). Now: ImageCms cannot read it,
    # so it is dropped: the same bytes as from the photo without a profile, a few KB, no profile.
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        junk = write(tmp_path / "junk.jpg", encode(photo, "JPEG", quality=90, icc_profile=os.urandom(4 * MB)))
        plain = write(tmp_path / "plain.jpg", encode(photo, "JPEG", quality=90))
    assert len(opened(junk).info["icc_profile"]) == 4 * MB
    for fmt in Image.FORMATS:
        Image.make_thumbnail(junk, tmp_path / f"junk.{fmt}", 64, 64, fmt=fmt)
        Image.make_thumbnail(plain, tmp_path / f"plain.{fmt}", 64, 64, fmt=fmt)
        thumbnail = (tmp_path / f"junk.{fmt}").read_bytes()
        assert len(thumbnail) < 10_000 and thumbnail == (tmp_path / f"plain.{fmt}").read_bytes()
        assert "icc_profile" not in opened(tmp_path / f"junk.{fmt}").info


def test_large_valid_icc_profile_is_applied_to_the_pixels(tmp_path):
    # Tried: red | lime halves tagged with a valid 4 MiB profile whose red colorant is sRGB's blue (a JPEG),
    # and red | transparent as RGBA (a lossless WebP: Pillow reads no PNG profile over 1 MB). Got: thumbnails
    # of a few KB without a profile, converted to sRGB (red shows as the blue it stands for; alpha kept, or
    # the transparent half white in a jpeg).
    icc = icc_swapping_red_and_blue(padding=4 * MB)
    assert len(icc) > 4 * MB
    rgb = write(tmp_path / "rgb.jpg", encode(halves("RGB", "red", "lime"), "JPEG", quality=95, icc_profile=icc))
    rgba_source = halves("RGBA", (255, 0, 0, 255), (0, 0, 0, 0))
    rgba = write(tmp_path / "rgba.webp", encode(rgba_source, "WEBP", lossless=True, icc_profile=icc))
    for fmt in Image.FORMATS:
        Image.make_thumbnail(rgb, tmp_path / f"rgb.{fmt}", 32, 32, fmt=fmt)
        Image.make_thumbnail(rgba, tmp_path / f"rgba.{fmt}", 32, 32, fmt=fmt)
        for name in ("rgb", "rgba"):
            assert (tmp_path / f"{name}.{fmt}").stat().st_size < 10_000
            assert "icc_profile" not in opened(tmp_path / f"{name}.{fmt}").info
        thumb = opened(tmp_path / f"rgb.{fmt}").convert("RGB")
        assert near(thumb.getpixel((4, 16)), (0, 0, 255)) and near(thumb.getpixel((28, 16)), (0, 255, 0))
        thumb = opened(tmp_path / f"rgba.{fmt}").convert("RGBA")
        assert near(thumb.getpixel((4, 16)), (0, 0, 255, 255))
        if fmt == "jpeg":
            assert near(thumb.getpixel((28, 16)), (255, 255, 255, 255))
        else:
            assert thumb.getpixel((28, 16))[3] == 0


def test_icc_profile_up_to_the_limit_is_embedded_above_it_applied(tmp_path, monkeypatch):
    # Tried: the same small (496-byte) swapped profile with MAX_EMBEDDED_ICC at its size, then one byte less.
    # Got: at the limit it is embedded and the pixels stay red; above it they are converted to blue, no profile.
    icc = icc_swapping_red_and_blue()
    path = write(tmp_path / "red.png", encode(PILImage.new("RGB", (16, 16), "red"), "PNG", icc_profile=icc))
    monkeypatch.setattr(Image, "MAX_EMBEDDED_ICC", len(icc))
    Image.make_thumbnail(path, tmp_path / "kept.png", 8, 8)
    kept = opened(tmp_path / "kept.png")
    assert kept.info["icc_profile"] == icc and kept.getpixel((4, 4)) == (255, 0, 0)
    monkeypatch.setattr(Image, "MAX_EMBEDDED_ICC", len(icc) - 1)
    Image.make_thumbnail(path, tmp_path / "applied.png", 8, 8)
    applied = opened(tmp_path / "applied.png")
    assert "icc_profile" not in applied.info and near(applied.getpixel((4, 4)), (0, 0, 255), 2)


# --- PNG and WebP stills through libvips -------------------------------------------------------------


def libvips_thumbnails(monkeypatch) -> list:
    """The (width, height) asked of every thumbnail libvips makes from now on."""
    asked = []
    thumbnail_image = pyvips.Image.thumbnail_image

    def spy(image, width, **options):
        asked.append((width, options["height"]))
        return thumbnail_image(image, width, **options)

    monkeypatch.setattr(pyvips.Image, "thumbnail_image", spy, raising=False)
    return asked


def by_pillow_only(monkeypatch):
    """From now on every format is decoded by Pillow, as before libvips was an engine."""
    for name, fmt in Image.READ_FORMATS.items():
        monkeypatch.setitem(Image.READ_FORMATS, name, dataclasses.replace(fmt, libvips_loader=None))


LIBVIPS_SOURCES = {  # name: (mode of the 375x500 photo, Pillow format, save options)
    "RGB.png": ("RGB", "PNG", {}),
    "RGBA.png": ("RGBA", "PNG", {}),
    "L.png": ("L", "PNG", {}),
    "LA.png": ("LA", "PNG", {}),
    "P-transparent.png": ("P", "PNG", {"transparency": 0}),
    "I;16.png": ("I;16", "PNG", {}),
    "RGB.webp": ("RGB", "WEBP", {"quality": 90}),
    "RGBA.webp": ("RGBA", "WEBP", {"lossless": True}),
}


def libvips_source(tmp_path, name) -> Path:
    mode, fmt, options = LIBVIPS_SOURCES[name]
    with PILImage.open(TESTDATA / "jemma.png") as photo:
        img = photo.convert("RGBA")
    img.putalpha(PILImage.linear_gradient("L").resize(img.size))  # alpha from opaque to clear, top to bottom
    if mode == "I;16":
        img = PILImage.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    else:
        img = img.convert(mode)
    return write(tmp_path / name, encode(img, fmt, **options))


@pytest.mark.parametrize("fit", Image.FITS)
@pytest.mark.parametrize("name", LIBVIPS_SOURCES)
def test_png_and_webp_stills_are_shrunk_by_libvips_to_what_pillow_makes(tmp_path, monkeypatch, name, fit):
    # Tried: the 375x500 photo as PNG in RGB, RGBA, L, LA, a palette with a transparent colour and 16-bit grey,
    # and as lossy and lossless WebP, to a 100x60 box in every fit. Got: libvips shrank each (one thumbnail
    # asked, at the output's size for contain), to the size and mode Pillow alone makes, its pixels 36-50 dB
    # from Pillow's (the two resample with different filters; alpha premultiplied), so above 35.
    path = libvips_source(tmp_path, name)
    asked = libvips_thumbnails(monkeypatch)
    made = Image.make_thumbnail(path, tmp_path / "libvips.png", 100, 60, fit=fit, fmt="png")
    assert len(asked) == 1 and (fit != "contain" or asked == [(made["width"], made["height"])])
    by_pillow_only(monkeypatch)
    assert Image.make_thumbnail(path, tmp_path / "pillow.png", 100, 60, fit=fit, fmt="png") == made
    assert len(asked) == 1
    libvips, pillow = opened(tmp_path / "libvips.png"), opened(tmp_path / "pillow.png")
    assert libvips.mode == pillow.mode and libvips.size == pillow.size
    assert psnr(libvips, pillow) > 35


@pytest.mark.parametrize("box", [100, 256, 512])
def test_a_webp_libvips_decodes_scaled_keeps_the_photos_pixels(tmp_path, box):
    """libwebp decodes scaled. Asked for the output's own size, a 1920x1280 photo's thumbnail was 36.1, 38.4
    and 41.3 dB from one LANCZOS step of the full decode (100, 256, 512 px); asked for twice it, as Pillow's
    reduce() is, 44.2, 47.8 and 49.2, for the same CPU at 100 px (bench/engine.py's photos: 40.3 and 48.9)."""
    with PILImage.open(big_jpeg(tmp_path)) as photo:
        path = write(tmp_path / "big.webp", encode(photo, "WEBP", quality=90))
    assert thumbnail_psnr(tmp_path, path, box) > 43


def test_libvips_keeps_pillows_contain_size_for_any_shape(tmp_path, monkeypatch):
    # Tried: 40 random shapes from 1x1 to 3000x3000 (grey PNGs) into random boxes. Got: each thumbnail has the
    # size Pillow's own thumbnail() gives that shape, whichever decoder shrank it (libvips for all that shrink).
    rng = np.random.default_rng(7)
    asked = libvips_thumbnails(monkeypatch)
    shrunk = 0
    for index in range(40):
        shape = tuple(int(side) for side in rng.integers(1, 3000, 2))
        box = tuple(int(side) for side in rng.integers(1, 400, 2))
        path = write(tmp_path / f"{index}.png", encode(PILImage.new("L", shape), "PNG"))
        expected = PILImage.new("1", shape)
        expected.thumbnail(box)
        made = Image.make_thumbnail(path, tmp_path / "t.png", *box)
        assert (made["width"], made["height"]) == expected.size, (shape, box)
        shrunk += expected.size != shape
    assert len(asked) == shrunk > 30


@pytest.mark.parametrize("name", ["RGB.png", "RGBA.png", "I;16.png"])
def test_half_a_png_is_corrupt_through_libvips(tmp_path, monkeypatch, name):
    # Tried: the first half of each (libvips, left to itself, shows a truncated PNG's missing rows grey; half a
    # WebP never reaches it: Pillow cannot open it). Got: "The image data is truncated or corrupt.", nothing
    # written.
    data = libvips_source(tmp_path, name).read_bytes()
    path = write(tmp_path / f"half-{name}", data[: len(data) // 2])
    (tmp_path / "out").mkdir()
    asked = libvips_thumbnails(monkeypatch)
    assert image_error(Image.make_thumbnail, path, tmp_path / "out" / "t.png", 100, 100) == CORRUPT
    assert asked == [(75, 100)]
    assert_only(tmp_path / "out")


XMP_ORIENTATION_6 = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def oriented_sources(tmp_path) -> dict[str, Path]:
    """600x400, left half red, right half blue, told to turn by 90 degrees (orientation 6) in each way a file
    can say so; and a PNG whose eXIf chunk follows its pixels, which neither decoder reads (so it stays)."""
    exif = PILImage.Exif()
    exif[0x0112] = 6
    image = halves("RGB", "red", "blue", (600, 400))
    raw = exif.tobytes().hex()
    profile = f"\nexif\n{len(raw) // 2}\n" + "\n".join(raw[i : i + 72] for i in range(0, len(raw), 72)) + "\n"
    text = {"xmp": PngImagePlugin.PngInfo(), "raw": PngImagePlugin.PngInfo()}
    text["xmp"].add_itxt("XML:com.adobe.xmp", XMP_ORIENTATION_6)
    text["raw"].add_text("Raw profile type exif", profile)
    plain = encode(image, "PNG")
    tail = b"eXIf" + exif.tobytes()
    trailing = plain[:-12] + struct.pack(">I", len(tail) - 4) + tail + struct.pack(">I", zlib.crc32(tail)) + plain[-12:]
    files = {
        "exif.jpg": encode(image, "JPEG", exif=exif.tobytes()),
        "xmp.jpg": encode(image, "JPEG", xmp=XMP_ORIENTATION_6.encode()),
        "exif.png": encode(image, "PNG", exif=exif.tobytes()),
        "xmp.png": encode(image, "PNG", pnginfo=text["xmp"]),
        "raw-profile.png": encode(image, "PNG", pnginfo=text["raw"]),
        "exif.webp": encode(image, "WEBP", exif=exif.tobytes()),
        "xmp.webp": encode(image, "WEBP", xmp=XMP_ORIENTATION_6.encode()),
        "exif-after-pixels.png": trailing,
    }
    return {name: write(tmp_path / name, data) for name, data in files.items()}


@pytest.mark.parametrize("box", [100, 500])
def test_every_decoder_turns_an_image_by_the_same_reading_of_its_orientation(tmp_path, monkeypatch, box):
    # Tried: orientation 6 as EXIF and as XMP in a JPEG, PNG and WebP, and as an ImageMagick raw profile in a
    # PNG, into a 100 box (a JPEG drafted by Pillow, the others shrunk by libvips) and a 500 box (all shrunk by
    # libvips). Got: each a portrait (67x100, 333x500) with the stored left half (red) on top, as Pillow
    # alone makes it. A PNG's eXIf after its pixels is read by neither: it stays a landscape, whatever the box.
    asked = libvips_thumbnails(monkeypatch)
    for name, path in oriented_sources(tmp_path).items():
        made = Image.make_thumbnail(path, tmp_path / "t.png", box, box)
        thumb = opened(tmp_path / "t.png")
        if name == "exif-after-pixels.png":
            assert thumb.size == (box, box * 2 // 3 + (box == 100)), name
            continue
        assert (made["width"], made["height"]) == thumb.size == (box * 2 // 3 + (box == 100), box), name
        assert near(thumb.getpixel((thumb.width // 2, 3)), (255, 0, 0), 40), name
        assert near(thumb.getpixel((thumb.width // 2, thumb.height - 4)), (0, 0, 255), 40), name
    assert len(asked) == (6 if box == 100 else 8)


def test_open_rgb_decodes_reduced_and_upright_as_a_thumbnail_does(tmp_path, monkeypatch):
    """open_rgb (duplicates' perceptual hash, classify's input) uses a thumbnail's decoders and its reading of
    the orientation. Tried: the oriented sources (600x400, orientation 6) with a short side of at least 100; a
    300x200 JPEG with orientation 6 at 100 (1/2 fits) and at 120 (no DCT scale fits); a CMYK JPEG no scale fits;
    an animated GIF. Got: each upright and reduced (100x150, the stored left half, red, on top): the JPEGs
    drafted by Pillow, the PNGs and WebPs shrunk by libvips; the small JPEG drafted at 100 and decoded whole by
    Pillow at 120 (libvips would cost more there); the CMYK JPEG and the GIF whole by Pillow, libvips not asked.
    The PNG whose eXIf follows its pixels stays a landscape, as its thumbnail does (ImageOps.exif_transpose, used
    before, turned it)."""
    asked = libvips_thumbnails(monkeypatch)
    for name, path in oriented_sources(tmp_path).items():
        img = Image.open_rgb(path, LIMIT, 100)
        if name == "exif-after-pixels.png":
            assert img.size == (150, 100), name
            continue
        assert img.size == (100, 150), name
        assert near(img.getpixel((50, 3)), (255, 0, 0), 40) and near(img.getpixel((50, 146)), (0, 0, 255), 40), name
    assert len(asked) == 6  # the 5 PNGs and WebPs, and the trailing-eXIf PNG; not the drafted JPEGs
    small = rotated_source(tmp_path, "JPEG")
    asked.clear()
    assert Image.open_rgb(small, LIMIT, 100).size == (100, 150) and asked == []  # drafted to 1/2 by Pillow
    assert Image.open_rgb(small, LIMIT, 120).size == (200, 300) and asked == []  # no scale fits: whole, by Pillow
    asked.clear()
    cmyk = write(tmp_path / "cmyk.jpg", encode(PILImage.new("CMYK", (600, 400), (0, 255, 255, 0)), "JPEG"))
    img = Image.open_rgb(cmyk, LIMIT, 300)  # 1/2 would be 300x200: whole, by Pillow, as any JPEG no scale fits
    assert img.size == (600, 400) and img.mode == "RGB" and near(img.getpixel((5, 5)), (255, 0, 0), 40)
    moving = Image.open_rgb(animation(tmp_path / "a.gif", "GIF", size=(600, 400)), LIMIT, 100)
    assert moving.size == (600, 400) and asked == []  # an animation's first frame, whole, by Pillow


def test_a_png_heavy_with_text_is_decoded_by_pillow(tmp_path, monkeypatch):
    # Tried: a 300x300 PNG carrying 2 MB of text in two compressed chunks (a few KB on disk). libvips copies
    # text into every image of its pipeline (60 MB of it took 4 times Pillow's memory). Got: Pillow decodes
    # it, within the decode budget; libvips is not asked.
    info = PngImagePlugin.PngInfo()
    for key in ("one", "two"):
        info.add_text(key, "x" * 1024 * 1024, zip=True)
    path = write(tmp_path / "text.png", encode(halves("RGB", "red", "blue", (300, 300)), "PNG", pnginfo=info))
    assert path.stat().st_size < 20_000
    asked = libvips_thumbnails(monkeypatch)
    assert Image.make_thumbnail(path, tmp_path / "t.png", 100, 100)["width"] == 100
    assert asked == []


def test_a_jpeg_libvips_shrinks_is_turned_upright_and_refused_truncated(tmp_path, monkeypatch):
    # Tried, each into a box over half the source (so no DCT scale applies): a 600x400 JPEG tagged orientation
    # 6 into 500x500, the first half of a 1920x1280 JPEG into 1024, and a CMYK JPEG into 500x500. Got: libvips
    # shrank the first two (as stored; Pillow turns it): a 333x500 portrait with the stored left half (red) on
    # top, and "The image data is
    # truncated or corrupt."; Pillow decoded the CMYK one (converted by its formula, as every CMYK image).
    data = big_jpeg(tmp_path).read_bytes()
    rotated = rotated_source(tmp_path, "JPEG", (600, 400))
    cmyk = write(tmp_path / "cmyk.jpg", encode(halves("CMYK", (0, 255, 255, 0), (255, 255, 0, 0), (600, 400)), "JPEG"))
    asked, sizes = libvips_thumbnails(monkeypatch), decoded_sizes(monkeypatch)
    made = Image.make_thumbnail(rotated, tmp_path / "t.png", 500, 500)
    assert (made["width"], made["height"]) == (333, 500) and asked == [(500, 333)] and sizes == []  # as stored
    thumb = opened(tmp_path / "t.png")
    assert near(thumb.getpixel((166, 20)), (255, 0, 0), 40) and near(thumb.getpixel((166, 480)), (0, 0, 255), 40)
    half = write(tmp_path / "half.jpg", data[: len(data) // 2])
    assert image_error(Image.make_thumbnail, half, tmp_path / "h.jpg", 1024, 1024) == CORRUPT
    assert asked[1:] == [(1024, 683)]
    sizes.clear()
    Image.make_thumbnail(cmyk, tmp_path / "c.png", 500, 500)
    assert len(asked) == 2 and sizes == [(600, 400)]
    assert near(opened(tmp_path / "c.png").getpixel((10, 10)), (255, 0, 0), 40)


def test_a_file_rewritten_before_libvips_reads_it_is_refused(tmp_path, monkeypatch):
    # Tried: a 600x400 PNG, measured by Pillow against a 1 MP limit, rewritten in place (same file, same
    # descriptor) as a 4000x1000 one just before libvips reads it. Got: "The image data is truncated or
    # corrupt.", and nothing written: libvips' reading of the size is checked against Pillow's.
    path = write(tmp_path / "swap.png", encode(halves("RGB", "red", "blue", (600, 400)), "PNG"))
    larger = encode(halves("RGB", "blue", "red", (4000, 1000)), "PNG")
    check = Image._check_decode_bytes

    def rewrite_then_check(img, limit, kept=0):
        with open(path, "r+b") as file:
            file.write(larger)
            file.truncate()
        check(img, limit, kept)

    monkeypatch.setattr(Image, "_check_decode_bytes", rewrite_then_check)
    (tmp_path / "out").mkdir()
    assert (
        image_error(Image.make_thumbnail, path, tmp_path / "out" / "t.png", 300, 300, max_pixels=1_000_000) == CORRUPT
    )
    assert_only(tmp_path / "out")


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"P6 1 1 255\n\0\0\0",  # PPM
        b"SIMPLE  =                    T" + b" " * 2850,  # FITS
        encode(PILImage.new("RGB", (8, 8)), "GIF"),  # Pillow decodes these two
        encode(PILImage.new("RGB", (8, 8)), "TIFF"),
    ],
    ids=["svg", "ppm", "fits", "gif", "tiff"],
)
def test_libvips_parses_only_the_formats_routed_to_it(data):
    # Tried: handing libvips, once the engine is imported, files of formats it can read but READ_FORMATS gives
    # to Pillow or to no one. Got: libvips refuses each as unknown; its other loaders are blocked.
    with pytest.raises(pyvips.Error, match="not in a known format"):
        pyvips.Image.thumbnail_buffer(data, 8)


def test_libvips_leaves_no_descriptor_open(tmp_path):
    # Tried: 50 PNG thumbnails, each read by libvips through a copy of Pillow's descriptor, and 10 of half a PNG
    # with their errors kept (an error's traceback held libvips' copy of the file open). Got: as many open as
    # before.
    path = libvips_source(tmp_path, "RGB.png")
    data = path.read_bytes()
    half = write(tmp_path / "half.png", data[: len(data) // 2])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        Image.make_thumbnail(path, tmp_path / "t.png", 64, 64)
    errors = []
    for _ in range(10):
        with pytest.raises(ImageError) as raised:
            Image.make_thumbnail(half, tmp_path / "h.png", 64, 64)
        errors.append(raised.value)
    assert len(os.listdir("/proc/self/fd")) == before


# --- HEIC -----------------------------------------------------------------------------------------


def heic_of(path: Path, img, **options) -> Path:
    """img saved as a HEIC by pillow-heif (libheif with x265), as a phone would."""
    img.save(path, "HEIF", quality=90, **options)
    return path


def test_heic_is_read_and_becomes_a_jpeg_whose_pixels_match(tmp_path):
    """HEIC could not be read ("not an image"). A HEIC made from castle_image.jpg is sized from its header
    (no pixel decoded: load is made to fail), and thumbnailed into a JPEG by default (browsers but Safari
    cannot show HEIC) whose pixels are the photo's own thumbnail's, within encoding noise."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        path = heic_of(tmp_path / "castle.heic", photo)
    from pillow_heif.as_plugin import HeifImageFile

    loading = HeifImageFile.load
    HeifImageFile.load = lambda img: pytest.fail("a size decoded pixels")
    try:
        assert Image.read_size(path, LIMIT) == {"width": 800, "height": 480, "format": "HEIF", "mode": "RGB"}
    finally:
        HeifImageFile.load = loading
    made = Image.make_thumbnail(path, lambda ext: str(tmp_path / f"t{ext}"), 200, 200)
    assert made == {"width": 200, "height": 120, "format": "JPEG"}
    Image.make_thumbnail(TESTDATA / "castle_image.jpg", tmp_path / "expected.jpg", 200, 200)
    thumb = np.asarray(opened(tmp_path / "t.jpg"), dtype=float)
    expected = np.asarray(opened(tmp_path / "expected.jpg"), dtype=float)
    assert np.abs(thumb - expected).mean() < 6
    assert Image.make_thumbnail(path, tmp_path / "a.avif", 64, 64, fmt="avif")["format"] == "AVIF"
    assert Image.open_rgb(path, LIMIT, 100).size == (800, 480)  # the classifier's input
    assert Image.histogram(path, LIMIT)["red"] and Image.output_extension("HEIF", None) == ".jpg"


def test_a_rotated_heic_comes_out_upright(tmp_path):
    """A phone stores a portrait photo landscape with a rotation (EXIF orientation 6, which pillow-heif writes
    as the HEIF's own irot). Tried: 400x200, the left quarter blue, saved with orientation 6. Got: libheif
    rotates it while decoding and Pillow sees orientation 1, so it is not turned twice: a 200x400 (upright)
    size and thumbnail, blue along the top."""
    source = PILImage.new("RGB", (400, 200), "red")
    source.paste((0, 0, 255), (0, 0, 100, 200))
    exif = PILImage.Exif()
    exif[0x0112] = 6
    path = heic_of(tmp_path / "rotated.heic", source, exif=exif.tobytes())
    assert (Image.read_size(path, LIMIT)["width"], Image.read_size(path, LIMIT)["height"]) == (200, 400)
    made = Image.make_thumbnail(path, tmp_path / "t.png", 100, 100, fmt="png")
    assert made == {"width": 50, "height": 100, "format": "PNG"}
    thumb = opened(tmp_path / "t.png")
    assert near(thumb.getpixel((25, 3)), (0, 0, 255)) and near(thumb.getpixel((25, 96)), (255, 0, 0))


def test_hostile_heics_get_their_sentence(tmp_path):
    """Tried: half a HEIC, its first 300 bytes, a 2000x1000 HEIC under a 1 MP limit, and the same under a
    4 MB decode budget. Got: "truncated or corrupt" (libheif's "Unexpected end of file"), "not an image",
    the pixel sentence before decoding, the decode sentence (libheif's planes counted: 8 bytes a pixel besides
    the image); nothing written."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        data = heic_of(tmp_path / "castle.heic", photo).read_bytes()
    heic_of(tmp_path / "big.heic", PILImage.new("RGB", (2000, 1000), "teal"))
    half = write(tmp_path / "half.heic", data[: len(data) // 2])
    head = write(tmp_path / "head.heic", data[:300])
    out = tmp_path / "out"
    assert image_error(Image.make_thumbnail, half, out / "t.jpg") == CORRUPT
    assert image_error(Image.make_thumbnail, head, out / "t.jpg") == NOT_AN_IMAGE
    assert image_error(Image.read_size, tmp_path / "big.heic", 1_000_000) == (
        "The image has 2,000,000 pixels, more than the limit of 1,000,000 (MAX_IMAGE_PIXELS)."
    )
    assert image_error(Image.make_thumbnail, tmp_path / "big.heic", out / "t.jpg", max_decode_bytes=4 * MB) == (
        "Decoding the image would take about 23 MB, more than the limit of 4 MB (MAX_DECODE_MB)."
    )
    assert not out.exists()


# --- JPEG XL --------------------------------------------------------------------------------------


def jxl_declaring(width_and_height: int) -> bytes:
    """A bare JPEG XL codestream whose SizeHeader says a square of that side, and nothing after it: a bomb
    of 21 bytes. Bits least significant first: small=0, U32 selector 3 (30 bits) for the height, ratio 1."""
    bits = (3 << 1) | ((width_and_height - 1) << 3) | (1 << 33)
    return b"\xff\x0a" + bits.to_bytes(8, "little") + bytes(11)


def test_jpeg_xl_is_read_in_both_forms_and_becomes_a_jpeg(tmp_path):
    """JPEG XL was "not an image". castle_image.jpg as a bare JPEG XL codestream and as a container (JPEG
    recompressed losslessly: the jxlp box) is sized 800x480 and thumbnailed into a JPEG (only Safari shows
    JPEG XL) whose pixels match the photo's own thumbnail's; the size read from the header before the plugin
    decodes is the decoded one, for odd and ratio-coded sizes too."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        photo.save(tmp_path / "bare.jxl", quality=90)
        photo.save(tmp_path / "boxed.jxl", lossless=True)
        photo.resize((1001, 333)).save(tmp_path / "odd.jxl")
        photo.resize((1024, 768)).save(tmp_path / "ratio.jxl")
        photo.resize((64, 48)).save(tmp_path / "small.jxl")
    assert (tmp_path / "boxed.jxl").read_bytes()[4:8] == b"JXL " and b"jxlp" in (tmp_path / "boxed.jxl").read_bytes()
    Image.make_thumbnail(TESTDATA / "castle_image.jpg", tmp_path / "expected.jpg", 200, 200)
    expected = np.asarray(opened(tmp_path / "expected.jpg"), dtype=float)
    for name in ("bare", "boxed"):
        assert Image.read_size(tmp_path / f"{name}.jxl", LIMIT) == {
            "width": 800,
            "height": 480,
            "format": "JXL",
            "mode": "RGB",
        }
        made = Image.make_thumbnail(tmp_path / f"{name}.jxl", tmp_path / f"{name}.jpg", 200, 200)
        assert made == {"width": 200, "height": 120, "format": "JPEG"}
        assert np.abs(np.asarray(opened(tmp_path / f"{name}.jpg"), dtype=float) - expected).mean() < 6
    for name, size in (("odd", (1001, 333)), ("ratio", (1024, 768)), ("small", (64, 48))):
        assert Image._jxl_size(tmp_path / f"{name}.jxl") == size == opened(tmp_path / f"{name}.jxl").size


def test_hostile_jpeg_xls_are_refused_before_the_plugin_decodes(tmp_path, monkeypatch):
    """pillow-jxl-plugin decodes the whole image as Image.open opens it, before any check of ours could run.
    Tried, with the plugin's open made to fail: a 21-byte JPEG XL declaring 100,000 x 100,000 pixels, and an
    800x480 one under a 1 MB budget. Got: the pixel and the decode sentences, the plugin never called. Then
    with the plugin: half a JPEG XL (libjxl's "Generic Error") and its first 20 bytes (the container's
    signature and ftyp box, no codestream) are "truncated or corrupt", nothing written."""
    from pillow_jxl.JpegXLImagePlugin import JXLImageFile

    bomb = write(tmp_path / "bomb.jxl", jxl_declaring(100_000))
    with PILImage.open(TESTDATA / "castle_image.jpg") as photo:
        photo.save(tmp_path / "castle.jxl")
    data = (tmp_path / "castle.jxl").read_bytes()
    opening = JXLImageFile._open
    monkeypatch.setattr(JXLImageFile, "_open", lambda img: pytest.fail("the plugin decoded"))
    assert image_error(Image.read_size, bomb, LIMIT) == (
        "The image has 10,000,000,000 pixels, more than the limit of 50,000,000 (MAX_IMAGE_PIXELS)."
    )
    assert image_error(Image.make_thumbnail, tmp_path / "castle.jxl", tmp_path / "t.jpg", max_decode_bytes=MB) == (
        "Decoding the image would take about 4 MB, more than the limit of 1 MB (MAX_DECODE_MB)."
    )
    monkeypatch.setattr(JXLImageFile, "_open", opening)
    for name, part in (("half.jxl", data[: len(data) // 2]), ("head.jxl", data[:20])):
        assert image_error(Image.make_thumbnail, write(tmp_path / name, part), tmp_path / "out" / "t.jpg") == CORRUPT
    assert not (tmp_path / "out").exists() and not (tmp_path / "t.jpg").exists()


# --- animations kept ------------------------------------------------------------------------------

ANIMATION_COLOURS = ("red", "lime", "blue", "yellow")
ANIMATION_DURATIONS = [100, 200, 300, 400]


def animation(path: Path, fmt: str, size=(64, 48), count=4, **options) -> Path:
    """count frames of size in ANIMATION_COLOURS by turns, ANIMATION_DURATIONS ms, looping 3 times."""
    frames = [PILImage.new("RGB", size, ANIMATION_COLOURS[index % 4]) for index in range(count)]
    durations = [ANIMATION_DURATIONS[index % 4] for index in range(count)]
    options = {"save_all": True, "append_images": frames[1:], "duration": durations, "loop": 3, **options}
    return write(path, encode(frames[0], fmt, **options))


def frames_of(path: Path) -> list[tuple]:
    """(colour of the centre, duration) of every frame of path."""
    found = []
    with PILImage.open(path) as img:
        for index in range(img.n_frames):
            img.seek(index)
            img.load()
            found.append((img.convert("RGB").getpixel((img.width // 2, img.height // 2)), img.info.get("duration")))
    return found


@pytest.mark.parametrize(
    ("fmt", "name", "written"), [("GIF", "a.gif", "GIF"), ("WEBP", "a.webp", "WEBP"), ("PNG", "a.png", "PNG")]
)
def test_an_animation_keeps_its_frames_and_timing(tmp_path, fmt, name, written):
    """Animations came out as a still of their first frame. Tried: a 4-frame 64x48 animation (red, lime, blue,
    yellow; 100, 200, 300, 400 ms; looping 3 times) as GIF, WebP and APNG, into a 32x32 box. Got: the same
    format by default, 4 frames of 32x24 in those colours and durations, the loop count kept, and "frames": 4
    in the answer; a size job says "frames": 4."""
    path = animation(tmp_path / name, fmt)
    assert Image.read_size(path, LIMIT)["frames"] == 4
    made = Image.make_thumbnail(path, lambda ext: str(tmp_path / f"t{ext}"), 32, 32)
    assert made == {"width": 32, "height": 24, "format": written, "frames": 4}
    thumb = tmp_path / f"t{Image.output_extension(fmt, None, animated=True)}"
    colours = [PILImage.new("RGB", (1, 1), colour).getpixel((0, 0)) for colour in ANIMATION_COLOURS]
    found = frames_of(thumb)
    assert [duration for _, duration in found] == ANIMATION_DURATIONS
    assert all(near(colour, expected) for (colour, _), expected in zip(found, colours))
    assert opened(thumb).info.get("loop") == 3


@pytest.mark.parametrize("fmt", ["webp", "avif", "gif", "png"])
def test_an_animation_into_every_format_that_animates(tmp_path, fmt):
    """A 4-frame GIF asked as each output that can animate keeps its 4 frames and durations (AVIF: Pillow
    13 writes animated AVIF); as JPEG, which cannot animate, it is a still of the first frame."""
    path = animation(tmp_path / "a.gif", "GIF")
    made = Image.make_thumbnail(path, tmp_path / f"t.{fmt}", 32, 32, fmt=fmt)
    assert made["frames"] == 4 and [duration for _, duration in frames_of(tmp_path / f"t.{fmt}")] == [
        100,
        200,
        300,
        400,
    ]
    assert Image.make_thumbnail(path, tmp_path / "t.jpg", 32, 32, fmt="jpeg") == {
        "width": 32,
        "height": 24,
        "format": "JPEG",
    }
    assert near(opened(tmp_path / "t.jpg").getpixel((16, 12)), (255, 0, 0))


def test_frames_first_makes_a_still_and_a_still_gif_stays_png(tmp_path):
    """frames=first: a still of the first frame, a GIF source's as PNG (as before: no 256-colour palette),
    and a still GIF is PNG by default too; cover and stretch crop every frame alike."""
    path = animation(tmp_path / "a.gif", "GIF")
    assert Image.make_thumbnail(path, tmp_path / "t.png", 32, 32, frames="first") == {
        "width": 32,
        "height": 24,
        "format": "PNG",
    }
    still = write(tmp_path / "still.gif", encode(PILImage.new("RGB", (20, 20), "red"), "GIF"))
    assert Image.make_thumbnail(still, lambda ext: str(tmp_path / f"s{ext}"))["format"] == "PNG"
    for fit in ("cover", "stretch"):
        made = Image.make_thumbnail(path, tmp_path / f"{fit}.webp", 30, 30, fit=fit, fmt="webp")
        assert made == {"width": 30, "height": 30, "format": "WEBP", "frames": 4}


def test_a_transparent_animation_stays_transparent(tmp_path):
    """Tried: a 2-frame GIF whose frames are red then blue on the left half, transparent on the right. Got:
    a GIF and a WebP whose two frames keep the colour on the left and transparency on the right (each frame
    whole, so nothing of the first shows through the second)."""
    frames = []
    for colour in ((255, 0, 0, 255), (0, 0, 255, 255)):
        frames.append(halves("RGBA", colour, (0, 0, 0, 0)))
    path = write(
        tmp_path / "a.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, disposal=2)
    )
    for fmt in ("gif", "webp"):
        Image.make_thumbnail(path, tmp_path / f"t.{fmt}", 32, 32, fmt=fmt)
        with PILImage.open(tmp_path / f"t.{fmt}") as thumb:
            for index, colour in enumerate(((255, 0, 0), (0, 0, 255))):
                thumb.seek(index)
                pixels = thumb.convert("RGBA")
                assert near(pixels.getpixel((4, 16)), (*colour, 255)) and pixels.getpixel((28, 16))[3] == 0


def test_too_many_frames_are_refused_before_decoding(tmp_path, monkeypatch):
    """Tried: a 10,000-frame 8x8 GIF (a few hundred KB) under the default MAX_FRAMES (1,000), and 300 frames
    of 64x48 covering a 1024 box under a 256 MB budget. Got: the frame sentence, which points to frames=first,
    and the decode sentence counting every resized frame held (300 x 1024 x 1024 x 4 bytes), no frame decoded
    in either, nothing written; frames=first makes the still, and a size job counts the frames. Contained in
    the same box (never upscaled: 64x48 a frame) the 300 frames are made."""
    many = animation(tmp_path / "many.gif", "GIF", size=(8, 8), count=10_000)
    big = animation(tmp_path / "big.gif", "GIF", count=300)
    sizes = decoded_sizes(monkeypatch)
    out = tmp_path / "out"
    assert image_error(Image.make_thumbnail, many, out / "t.gif") == (
        "The animation has 10,000 frames, more than the limit of 1,000 (MAX_FRAMES); "
        "frames=first makes a still of its first frame."
    )
    assert image_error(Image.make_thumbnail, big, out / "t.gif", 1024, 1024, "cover") == (
        "Decoding the animation would take about 1,201 MB, more than the limit of 256 MB (MAX_DECODE_MB)."
    )
    assert sizes == [] and not out.exists()
    assert Image.read_size(many, LIMIT)["frames"] == 10_000
    assert "frames" not in Image.make_thumbnail(many, tmp_path / "t.png", frames="first")
    assert Image.make_thumbnail(big, tmp_path / "t.gif", 1024, 1024)["frames"] == 300


# --- placeholders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"), [("castle_image.jpg", None), ("jemma.png", "webp"), ("CogentLabs.jpg", "avif")]
)
def test_a_placeholder_decodes_to_the_thumbnails_colours(tmp_path, name, fmt):
    """Each thumbnail can carry a BlurHash a page draws while it loads. Tried: three photos' thumbnails with
    placeholder=True. Got: a 28-character BlurHash (4 x 3 components, 3 x 4 for a portrait) that decodes to
    the thumbnail's mean colour within a few levels, and to its colours region by region (4 x 3 blocks, 20
    levels apart on average at most: a blur, not a copy)."""
    from blurhash_rs import blurhash_decode

    made = Image.make_thumbnail(TESTDATA / name, tmp_path / "t", 200, 200, fmt=fmt, placeholder=True)
    assert len(made["placeholder"]) == 28
    thumb = np.asarray(opened(tmp_path / "t").convert("RGB"), dtype=float)
    decoded = np.asarray(blurhash_decode(made["placeholder"], made["width"], made["height"]), dtype=float)
    assert np.abs(decoded.mean(axis=(0, 1)) - thumb.mean(axis=(0, 1))).max() < 8
    blocks = [PILImage.fromarray(a.astype(np.uint8)).resize((4, 3), PILImage.Resampling.BOX) for a in (thumb, decoded)]
    assert np.abs(np.asarray(blocks[0], dtype=float) - np.asarray(blocks[1], dtype=float)).mean() < 20


def test_a_placeholder_of_a_transparent_or_animated_thumbnail(tmp_path):
    """Tried: red | transparent (a PNG) and a red-first animation. Got: the transparent half decodes light
    (flattened onto white, as a page's background, not the black under it); the animation's is its first
    frame's red. Without placeholder=True there is none (the engine's callers ask for it)."""
    from blurhash_rs import blurhash_decode

    transparent = transparent_source(tmp_path, "RGBA")
    made = Image.make_thumbnail(transparent, tmp_path / "t.png", 64, 64, placeholder=True)
    decoded = blurhash_decode(made["placeholder"], 64, 64)
    assert decoded.getpixel((60, 32))[1] > 200 and decoded.getpixel((4, 32))[0] > 200
    moving = animation(tmp_path / "a.gif", "GIF")
    made = Image.make_thumbnail(moving, tmp_path / "a-t.gif", 32, 32, placeholder=True)
    assert made["frames"] == 4 and near(blurhash_decode(made["placeholder"], 8, 6).getpixel((4, 3)), (255, 0, 0), 40)
    assert "placeholder" not in Image.make_thumbnail(moving, tmp_path / "b.gif", 32, 32)


# --- where a crop sits: gravity and focus ---------------------------------------------------------


def plain_with(subject, at, size=(1200, 400)) -> PILImage.Image:
    """A plain, slightly grainy grey photo of size with subject pasted at `at`."""
    grain = np.random.default_rng(7).normal(0, 3, (size[1], size[0], 1))
    plain = PILImage.fromarray(np.clip(np.full((size[1], size[0], 3), 200.0) + grain, 0, 255).astype(np.uint8))
    plain.paste(subject, at)
    return plain


def busy_share(path) -> float:
    """The share of a thumbnail's pixels far from the plain grey: how much of the subject it kept."""
    pixels = np.asarray(opened(path).convert("RGB"), dtype=float)
    return float((np.abs(pixels - 200).max(axis=2) > 40).mean())


def test_smart_keeps_a_subject_at_the_far_left_and_centre_cuts_it(tmp_path):
    """Tried: the castle photo (300x180) pasted at the far left of a plain, grainy 1200x400 grey photo, covered
    into a 200x200 square (a third of the width is kept). Got: gravity=smart keeps the castle (most of the
    thumbnail is it); center, today's crop, keeps grey alone; west keeps it too, east does not."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as castle:
        source = plain_with(castle.convert("RGB").resize((300, 180)), (0, 110))
    path = write(tmp_path / "wide.jpg", encode(source, "JPEG", quality=92))
    shares = {}
    for gravity in ("smart", "center", "west", "east"):
        made = Image.make_thumbnail(path, tmp_path / f"{gravity}.png", 200, 200, "cover", "png", gravity=gravity)
        assert (made["width"], made["height"]) == (200, 200)
        shares[gravity] = busy_share(tmp_path / f"{gravity}.png")
    assert shares["smart"] > 0.2 and shares["west"] > 0.2, shares  # the castle fills 0.34 of a left crop
    assert shares["center"] < 0.01 and shares["east"] < 0.01, shares


def group_photo():
    """Three faces (the astronaut's, from scikit-image) side by side in the right third of a plain, grainy
    1500x500 photo, and the coffee photo (colourful, detailed) at its left."""
    import skimage.data

    face = PILImage.fromarray(skimage.data.astronaut()).crop((150, 40, 300, 220)).resize((120, 144))
    source = plain_with(face, (1020, 180), size=(1500, 500))
    source.paste(face, (1180, 180))
    source.paste(face, (1340, 180))
    source.paste(PILImage.fromarray(skimage.data.coffee()).resize((450, 300)), (20, 100))
    return source


def keeps_the_three_faces(thumbnail: Path) -> bool:
    """Whether a square cover of group_photo() is its right third: scaled to 300 px, the faces' middles are at
    x 24, 120 and 216 (48 px wide), y 120 to 180."""
    smart = np.asarray(opened(thumbnail).convert("RGB"), dtype=float)
    scale = smart.shape[1] / 300
    x_starts, width, (top, bottom) = [round(x * scale) for x in (24, 120, 216)], round(48 * scale), (120, 180)
    faces = [smart[round(top * scale) : round(bottom * scale), x : x + width] for x in x_starts]
    return all((np.abs(part - 200).max(axis=2) > 40).mean() > 0.5 for part in faces)


def test_smart_keeps_the_faces_of_a_group_photo(tmp_path, monkeypatch):
    """Tried: three faces (the astronaut's, from scikit-image) side by side in the right third of a plain, grainy
    1500x500 photo, and the coffee photo (colourful, detailed) at its left, covered into a square. Got:
    gravity=smart keeps all three faces (the crop of the right third): faces come first; with the face
    detector left out, the attention map alone takes the coffee; center keeps neither."""
    path = write(tmp_path / "group.jpg", encode(group_photo(), "JPEG", quality=92))
    Image.make_thumbnail(path, tmp_path / "smart.png", 300, 300, "cover", "png", gravity="smart")
    Image.make_thumbnail(path, tmp_path / "center.png", 300, 300, "cover", "png")
    assert keeps_the_three_faces(tmp_path / "smart.png")
    assert busy_share(tmp_path / "center.png") < 0.01
    monkeypatch.setattr(Image, "_faces", lambda img: [])
    Image.make_thumbnail(path, tmp_path / "attention.png", 300, 300, "cover", "png", gravity="smart")
    coffee = np.asarray(opened(tmp_path / "attention.png").convert("RGB"), dtype=float)[60:240, 12:282]
    assert (np.abs(coffee - 200).max(axis=2) > 40).mean() > 0.5


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_smart_finds_the_faces_in_a_small_cover_whichever_decoder_shrinks(tmp_path, monkeypatch, fmt):
    # Tried: the group photo as JPEG (drafted by Pillow), PNG and WebP (shrunk by libvips) covered into 100x100
    # with gravity=smart. Got: the face detector finds two of the three faces (as from a full decode), and the
    # crop keeps all three, in each. Before, each was decoded at the cover's size (300x100), where it found none.
    found = []
    faces = Image._faces
    monkeypatch.setattr(Image, "_faces", lambda img: found.extend(faces(img)) or faces(img))
    path = write(tmp_path / f"group.{fmt.lower()}", encode(group_photo(), fmt, quality=92))
    Image.make_thumbnail(path, tmp_path / "smart.png", 100, 100, "cover", "png", gravity="smart")
    assert len(found) >= 2 and keeps_the_three_faces(tmp_path / "smart.png")


def test_focus_keeps_the_point_it_names_and_compass_points_their_edge(tmp_path):
    """Tried: a 1200x400 grey photo with a red band at its left edge (40 px) and a blue one at its right,
    covered into squares. Got: focus=0.1,0.5 keeps the red band at the thumbnail's left (the crop cannot be
    centred on x=0.1 without leaving the image: it is pushed to the edge); focus=0.9,0.5 and east keep the
    blue; north and south of a tall image keep its top and bottom band; bad values are ValueErrors."""
    source = PILImage.new("RGB", (1200, 400), (200, 200, 200))
    source.paste((255, 0, 0), (0, 0, 40, 400))
    source.paste((0, 0, 255), (1160, 0, 1200, 400))
    path = write(tmp_path / "bands.png", encode(source, "PNG"))
    for focus, gravity, colour, x in (
        ((0.1, 0.5), "center", (255, 0, 0), 2),
        ((0.9, 0.5), "center", (0, 0, 255), 97),
        (None, "east", (0, 0, 255), 97),
        (None, "northwest", (255, 0, 0), 2),
    ):
        Image.make_thumbnail(path, tmp_path / "t.png", 100, 100, "cover", focus=focus, gravity=gravity)
        assert near(opened(tmp_path / "t.png").convert("RGB").getpixel((x, 50)), colour), (focus, gravity)
    tall = write(tmp_path / "tall.png", encode(source.rotate(90, expand=True), "PNG"))  # red at the bottom
    Image.make_thumbnail(tall, tmp_path / "s.png", 100, 100, "cover", gravity="south")
    assert near(opened(tmp_path / "s.png").convert("RGB").getpixel((50, 97)), (255, 0, 0))
    Image.make_thumbnail(tall, tmp_path / "n.png", 100, 100, "cover", gravity="north")
    assert near(opened(tmp_path / "n.png").convert("RGB").getpixel((50, 2)), (0, 0, 255))
    with pytest.raises(ValueError, match="gravity must be"):
        Image.make_thumbnail(path, tmp_path / "x.png", fit="cover", gravity="up")
    with pytest.raises(ValueError, match="focus must be"):
        Image.make_thumbnail(path, tmp_path / "x.png", fit="cover", focus=(1.5, 0))


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1), (5000, 30), (10, 20000)])
def test_smart_crops_of_thin_or_tiny_images_are_made(tmp_path, size):
    """Tried: gravity=smart on images whose attention copy is one pixel on a side. Got: a thumbnail (the crop in
    the middle); before, numpy's gradient raised and the job said "truncated or corrupt"."""
    path = write(tmp_path / "thin.png", encode(PILImage.new("RGB", size, (200, 30, 30)), "PNG"))
    made = Image.make_thumbnail(path, tmp_path / "out.png", 20, 20, "cover", "png", gravity="smart")
    assert (made["width"], made["height"]) == (20, 20)


@pytest.mark.parametrize(("size", "box"), [((4496, 117), (96, 93)), ((4587, 826), (363, 445))])
@pytest.mark.parametrize("gravity", ["center", "west", "smart"])
def test_a_cover_whose_crop_rounds_past_the_edge_is_made(tmp_path, size, box, gravity):
    """Tried: covers where floating point made the crop a hair wider than the image (its left edge -2e-13).
    Before, Pillow refused the negative box offset and the job said "truncated or corrupt" (about 4% of random
    downscaled covers). Got: the thumbnail, exactly the box."""
    path = write(tmp_path / "wide.png", encode(PILImage.new("RGB", size, (90, 120, 150)), "PNG"))
    made = Image.make_thumbnail(path, tmp_path / "out.png", *box, "cover", "png", gravity=gravity)
    assert (made["width"], made["height"]) == box


def test_an_animation_is_cropped_alike_in_every_frame(tmp_path):
    """Tried: a 2-frame 300x100 GIF, red at its left third (with a yellow stripe at its top in the second frame,
    so that the west crops of the two frames differ: a GIF writer merges equal frames) and green then blue at
    its right, smart and west covered into 50x50. Got: both frames of the west crop red in the middle; the
    smart crop, chosen on the first frame, the same place in both frames (their left columns are alike)."""
    frames = []
    for colour in ((0, 255, 0), (0, 0, 255)):
        frame = PILImage.new("RGB", (300, 100), (128, 128, 128))
        frame.paste((255, 0, 0), (0, 0, 100, 100))
        frame.paste(colour, (200, 0, 300, 100))
        frames.append(frame)
    frames[1].paste((255, 255, 0), (0, 0, 100, 10))
    path = write(tmp_path / "a.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80))
    Image.make_thumbnail(path, tmp_path / "west.gif", 50, 50, "cover", gravity="west")
    assert [colour for colour, _ in frames_of(tmp_path / "west.gif")] == [(255, 0, 0), (255, 0, 0)]
    Image.make_thumbnail(path, tmp_path / "smart.gif", 50, 50, "cover", gravity="smart")
    with PILImage.open(tmp_path / "smart.gif") as smart:
        columns = []
        for index in range(2):
            smart.seek(index)
            columns.append(smart.convert("RGB").getpixel((1, 25)))
    assert columns[0] == columns[1]

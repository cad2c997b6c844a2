"""What each photo format costs the engine, in and out, in one process and one thread.

    python bench/formats.py [--images 10] [--rounds 3] [--box 256]

Sources, made once under ~/.cache/imageapi-bench/format-sources from bench/corpus.py's first --images photos
(1920x1280): each photo as JPEG, PNG, WebP, AVIF, HEIC and JPEG XL (lossy ones at quality 90), BMP, TIFF (deflate) and
a still GIF; and animations of 24 frames, 480x320, cut from the photos (a slow pan), as GIF, WebP and APNG.

In: for each source format, the CPU ms per image of a size job (Image.read_size: the header, and an animation's
frame headers) and of a thumbnail into a --box square in the format's default output (Image.make_thumbnail,
exactly what a worker runs; an animation keeps its 24 frames). The baseline is JPEG's.
Out: the CPU ms per image of a thumbnail of the JPEG sources into each output format, and its bytes; the
baseline is JPEG's.

CPU: time.process_time() summed over the images, the median of --rounds rounds (this process only).
Prints one table and appends one line to bench/results.jsonl.
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from _common import cpu_ms, log, report  # noqa: E402

import Image as engine  # noqa: E402  (the service's engine; _common put the repository on the path)

SOURCES_DIR = Path.home() / ".cache" / "imageapi-bench" / "format-sources"
STILLS = {
    "jpeg": ("JPEG", {"quality": 90}),
    "png": ("PNG", {}),
    "webp": ("WEBP", {"quality": 90}),
    "avif": ("AVIF", {"quality": 90}),
    "heic": ("HEIF", {"quality": 90}),
    "jxl": ("JXL", {"quality": 90}),
    "bmp": ("BMP", {}),
    "tif": ("TIFF", {"compression": "tiff_deflate"}),
    "gif": ("GIF", {}),
}
ANIMATIONS = {"gif": "GIF", "webp": "WEBP", "png": "PNG"}
FRAMES, FRAME_SIZE = 24, (480, 320)


def still_sources(extension: str, photos: list[Path]) -> list[Path]:
    """The photos in one still format, made once (a file already there is kept)."""
    pillow, options = STILLS[extension]
    folder = SOURCES_DIR / "stills"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index, photo in enumerate(photos):
        path = folder / f"{index:04d}.{extension}"
        if not path.exists():
            with Image.open(photo) as img:
                img = img.convert("RGB")
                (img.convert("P") if pillow == "GIF" else img).save(path, pillow, **options)
        made.append(path)
    return made


def animation_sources(extension: str, photos: list[Path]) -> list[Path]:
    """One animation per photo: FRAMES crops of FRAME_SIZE panning across it, 40 ms each, looping."""
    folder = SOURCES_DIR / "animations"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index, photo in enumerate(photos):
        path = folder / f"{index:04d}.{extension}"
        if not path.exists():
            with Image.open(photo) as img:
                img = img.convert("RGB").resize((960, 640))
                step = (img.width - FRAME_SIZE[0]) // FRAMES
                frames = [img.crop((i * step, 80, i * step + FRAME_SIZE[0], 80 + FRAME_SIZE[1])) for i in range(FRAMES)]
            frames[0].save(path, ANIMATIONS[extension], save_all=True, append_images=frames[1:], duration=40, loop=0)
        made.append(path)
    return made


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10, help="photos per format (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the median is kept (default 3)")
    parser.add_argument("--box", type=int, default=256, help="the thumbnail's box (default 256)")
    args = parser.parse_args(argv)
    photos = corpus.jpegs(corpus.DEFAULT_OUT, args.images)
    log(f"formats: making the sources under {SOURCES_DIR} (once)")
    kinds = {f"{ext} still": still_sources(ext, photos) for ext in STILLS}
    kinds |= {f"{ext} animated ({FRAMES} frames)": animation_sources(ext, photos) for ext in ANIMATIONS}
    rows, figures = [], {"images": args.images, "box": args.box, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)

        def thumbnail(source: Path, fmt=None) -> None:
            engine.make_thumbnail(source, lambda extension: str(out / f"t{extension}"), args.box, args.box, fmt=fmt)

        cost = {}
        for kind, sources in kinds.items():
            log(f"formats: in, {kind}")
            cost[kind] = (
                cpu_ms(lambda source: engine.read_size(source, engine.DEFAULT_MAX_PIXELS), sources, args.rounds),
                cpu_ms(thumbnail, sources, args.rounds),
            )
        for kind, (size_ms, thumb_ms) in cost.items():
            rows.append((f"in: {kind}, size job, CPU ms/image", size_ms, cost["jpeg still"][0], ...))
            rows.append((f"in: {kind}, thumbnail {args.box} px, CPU ms/image", thumb_ms, cost["jpeg still"][1], ...))
            figures[f"in_{kind.split()[0]}_{kind.split()[1]}"] = {"size_ms": size_ms, "thumbnail_ms": thumb_ms}
        jpegs, written = kinds["jpeg still"], {}
        for fmt in engine.FORMATS:
            log(f"formats: out, {fmt}")
            ms = cpu_ms(lambda source, fmt=fmt: thumbnail(source, fmt), jpegs, args.rounds)
            size = statistics.mean(_written_bytes(thumbnail, source, fmt, out) for source in jpegs)
            written[fmt] = (ms, size)
        for fmt, (ms, size) in written.items():
            rows.append((f"out: {fmt}, thumbnail {args.box} px of a JPEG, CPU ms/image", ms, written["jpeg"][0], ...))
            rows.append((f"out: {fmt}, bytes", size, written["jpeg"][1], ...))
            figures[f"out_{fmt}"] = {"thumbnail_ms": ms, "bytes": size}
    report("formats", rows, figures)
    return 0


def _written_bytes(thumbnail, source: Path, fmt: str, out: Path) -> int:
    thumbnail(source, fmt)
    return (out / f"t{engine.OUTPUT_EXTENSIONS[fmt]}").stat().st_size


if __name__ == "__main__":
    sys.exit(main())

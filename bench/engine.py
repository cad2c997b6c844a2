"""The image engine alone, in one process and one thread: the CPU a thumbnail costs and the quality it keeps, for
every cell of sources x boxes x output formats, the service's engine beside thumbor's.

    python bench/engine.py [--images 20] [--rounds 3] [--boxes 100,256,512,1024] [--formats jpeg,webp,avif]
                           [--sources jpeg,jpeg12,png,webp]

Sources (made once under ~/.cache/imageapi-bench/engine-sources from bench/corpus.py's first --images photos):
`jpeg` the corpus's 1920x1280 JPEGs (2.5 MP, quality 90); `jpeg12` the same scaled to 4032x3024 (12 MP, a phone
photo's size) with film grain, quality 90; `png` and `webp` (quality 90) the 2.5 MP photos re-encoded.

Engines, file to file, each fitting the image in the box (never upscaling):
- `service`: Image.make_thumbnail(src, dest, box, box, fmt=...), exactly what a worker runs;
- `thumbor`: thumbor 7.8's PIL engine steps: draft(mode, the target size), resize to it with LANCZOS, save
  (JPEG and WebP at quality 80, its default; AVIF at Pillow's defaults);
- `vips`: libvips alone, pyvips.Image.thumbnail(src, box, height=box), saved by libvips at the same qualities
  (the service's engine has libvips shrink PNG and WebP stills, and Pillow encode them).

CPU: time.process_time() over the images, the median of --rounds rounds, in ms per image (this process only:
nothing else's work is counted, so a busy machine moves it little). Quality: the PSNR (dB, RGB) of each
thumbnail against a reference made from the same source by a full decode and ONE resize to the thumbnail's size
with LANCZOS; the mean over the images. A cell an engine cannot do (the service's AVIF before it writes AVIF)
says so. Prints one table and appends one line to bench/results.jsonl.
"""

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvips
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from _common import log, report  # noqa: E402

import Image as engine  # noqa: E402  (the service's engine; _common put the repository on the path)

SOURCES_DIR = Path.home() / ".cache" / "imageapi-bench" / "engine-sources"
PHONE = (4032, 3024)
QUALITY = {"jpeg": 80, "webp": 80}  # thumbor's defaults; AVIF: Pillow's
PILLOW = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
EXTENSIONS = {"jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}

# The service's engine lets libvips parse only the formats it routes to it; this bench's own libvips engine reads
# every source, so the block is lifted in this process.
pyvips.operation_block_set("VipsForeignLoad", False)


def make_sources(kind: str, photos: list[Path]) -> list[Path]:
    """The --images sources of one kind, made once (a file already there is kept)."""
    folder = SOURCES_DIR / kind
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for index, photo in enumerate(photos):
        path = folder / f"{index:04d}.{ {'jpeg': 'jpg', 'jpeg12': 'jpg'}.get(kind, kind) }"
        if not path.exists():
            with Image.open(photo) as img:
                img = img.convert("RGB")
                if kind == "jpeg12":
                    img = img.resize(PHONE, Image.Resampling.LANCZOS)
                    grain = np.random.default_rng(index).normal(0, 4, (PHONE[1], PHONE[0], 1))
                    img = Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))
                img.save(path, {"png": "PNG", "webp": "WEBP"}.get(kind, "JPEG"), quality=90)
        made.append(path)
    return made


def fit_in(size: tuple[int, int], box: int) -> tuple[int, int]:
    """thumbor's fit-in size of size in a box x box square: never larger, rounded half up."""
    width, height = size
    if box >= width and box >= height:
        return width, height
    if width >= height:
        return box, round(height * box / width + 1e-5)
    return round(width * box / height + 1e-5), box


def service(source: Path, out: Path, box: int, fmt: str) -> None:
    engine.make_thumbnail(str(source), str(out), box, box, fmt=fmt)


def thumbor(source: Path, out: Path, box: int, fmt: str) -> None:
    with Image.open(source) as img:
        target = fit_in(img.size, box)
        img.draft(img.mode if img.mode in ("RGB", "L") else "RGB", target)
        thumb = img.convert("RGB").resize(target, Image.Resampling.LANCZOS)
    thumb.save(out, PILLOW[fmt], **({"quality": QUALITY[fmt]} if fmt in QUALITY else {}))


def vips(source: Path, out: Path, box: int, fmt: str) -> None:
    thumb = pyvips.Image.thumbnail(str(source), box, height=box)
    thumb.write_to_file(str(out), **({"Q": QUALITY[fmt]} if fmt in QUALITY else {}))


ENGINES = {"service": service, "thumbor": thumbor, "vips": vips}


def can(engine_name: str, fmt: str) -> bool:
    return engine_name != "service" or fmt in engine.FORMATS


def psnr(thumb_path: Path, source: Path) -> float:
    with Image.open(thumb_path) as thumb:
        got = np.asarray(thumb.convert("RGB"), dtype=np.float64)
        size = thumb.size
    with Image.open(source) as img:
        reference = ImageOps.exif_transpose(img).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    error = np.mean((got - np.asarray(reference, dtype=np.float64)) ** 2)
    return 99.0 if error == 0 else 10 * math.log10(255**2 / error)


def measure(name: str, sources: list[Path], box: int, fmt: str, rounds: int, scratch: Path) -> tuple[float, float]:
    """(median CPU ms per image over the rounds, mean PSNR) of one engine in one cell."""
    function = ENGINES[name]
    outs = [scratch / f"{name}-{index:04d}{EXTENSIONS[fmt]}" for index in range(len(sources))]
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for source, out in zip(sources, outs):
            function(source, out, box, fmt)
        times.append((time.process_time() - started) * 1000 / len(sources))
    quality = statistics.fmean(psnr(out, source) for source, out in zip(sources, outs))
    for out in scratch.iterdir():
        out.unlink()
    return statistics.median(times), quality


def cell(kind: str, sources: list[Path], box: int, fmt: str, rounds: int, scratch: Path) -> dict:
    """{engine: (CPU ms per image, PSNR)} of one cell, for every engine that can do it."""
    measured = {name: measure(name, sources, box, fmt, rounds, scratch) for name in ENGINES if can(name, fmt)}
    log(f"{kind} -> {box} {fmt}: " + ", ".join(f"{n} {ms:.1f} ms {db:.1f} dB" for n, (ms, db) in measured.items()))
    return measured


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--boxes", default="100,256,512,1024")
    parser.add_argument("--formats", default="jpeg,webp,avif")
    parser.add_argument("--sources", default="jpeg,jpeg12,png,webp")
    args = parser.parse_args(argv)
    photos = corpus.jpegs(corpus.DEFAULT_OUT, args.images)
    rows, figures = [], {"images": args.images, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as scratch:
        for kind in args.sources.split(","):
            sources = make_sources(kind, photos)
            for box, fmt in itertools.product(map(int, args.boxes.split(",")), args.formats.split(",")):
                measured = cell(kind, sources, box, fmt, args.rounds, Path(scratch))
                for name, (ms, db) in measured.items():
                    figures[f"{kind}_{box}_{fmt}_{name}_cpu_ms"], figures[f"{kind}_{box}_{fmt}_{name}_psnr"] = ms, db
                if "service" in measured:
                    (ms, db), (base_ms, base_db) = measured["service"], measured["thumbor"]
                    rows.append((f"{kind} -> {box} {fmt}: CPU ms, thumbor / service", ms, base_ms, base_ms / ms))
                    rows.append((f"{kind} -> {box} {fmt}: PSNR dB, service - thumbor", db, base_db, db - base_db))
    report("engine", rows, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A deterministic folder of photo-like 1920x1280 images, built from real photos.

    python bench/corpus.py [--count 500] [--out images/bench-corpus] [--jobs N]

Sources: the photos in testdata/ (castle_image.jpg, CogentLabs.jpg, jemma.png), plus scikit-image's
`skimage.data` photos and matplotlib's sample grace_hopper.jpg when those packages are importable
(nothing is installed for them). Image i is source (i-th seeded choice) with its own crop, scale,
sub-pixel shift, flip, small rotation, colour/contrast/brightness tweak, sharpening and film grain,
resized to 1920x1280 and saved as a JPEG at quality 90; about 2% (every 50th, from index 25) are
PNGs instead. Every choice comes from random.Random(f"bench-corpus-{i}"), so image i is the same on
every run and no two images are alike. Files that already exist are skipped (idempotent); files are
written under a temporary name and renamed, so an interrupted run leaves no partial image.
"""

import argparse
import hashlib
import math
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

from PIL import Image, ImageChops, ImageEnhance, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, log, report  # noqa: E402

WIDTH, HEIGHT = 1920, 1280
QUALITY = 90
PNG_EVERY, PNG_OFFSET = 50, 25  # index % 50 == 25 is a PNG: 2% of the corpus
DEFAULT_OUT = ROOT / "images" / "bench-corpus"
TESTDATA = ("castle_image.jpg", "CogentLabs.jpg", "jemma.png")
# scikit-image's bundled colour photos (no download needed for these).
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "cat",
)
GRAIN_TILE = 320  # the grain is a seeded tile of this size, repeated (divides 1920 and 1280)


def name_of(index: int) -> str:
    return f"bench-{index:05d}" + (".png" if index % PNG_EVERY == PNG_OFFSET else ".jpg")


def load_sources() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) for every real photo available; testdata's always, the others if importable."""
    sources = []
    for name in TESTDATA:
        with Image.open(ROOT / "testdata" / name) as img:
            sources.append((f"testdata/{name}", ImageOps.exif_transpose(img).convert("RGB")))
    try:
        import skimage.data as data  # optional: used only if already installed

        for name in SKIMAGE_PHOTOS:
            try:
                array = getattr(data, name)()
                if getattr(array, "ndim", 0) == 3 and min(array.shape[:2]) >= 256:
                    sources.append((f"skimage.data.{name}", Image.fromarray(array[..., :3]).convert("RGB")))
            except Exception:  # a photo that needs a download, or an older scikit-image without it
                pass
    except ImportError:
        pass
    try:
        from matplotlib import cbook  # optional: used only if already installed

        with cbook.get_sample_data("grace_hopper.jpg") as file, Image.open(file) as img:
            sources.append(("matplotlib grace_hopper.jpg", img.convert("RGB")))
    except Exception:
        pass
    return sources


def _grain(rng: random.Random, amount: float) -> Image.Image:
    """Seeded film grain centred on 128: a blurred random tile (roughly Gaussian), repeated."""
    tile = Image.frombytes("RGB", (GRAIN_TILE, GRAIN_TILE), rng.randbytes(GRAIN_TILE * GRAIN_TILE * 3))
    tile = tile.filter(ImageFilter.GaussianBlur(0.7))
    # Uniform bytes blurred have a std of ~74/2.3; scale so the grain's std is about `amount` levels.
    gain = amount / 32.0
    tile = tile.point(lambda v: max(0, min(255, round(128 + (v - 128) * gain))))
    grain = Image.new("RGB", (WIDTH, HEIGHT))
    for x in range(0, WIDTH, GRAIN_TILE):
        for y in range(0, HEIGHT, GRAIN_TILE):
            grain.paste(tile, (x, y))
    return grain


def make_image(index: int, sources: list[tuple[str, Image.Image]]) -> Image.Image:
    rng = random.Random(f"bench-corpus-{index}")
    _, source = sources[rng.randrange(len(sources))]
    if rng.random() < 0.5:
        source = ImageOps.mirror(source)
    angle = rng.uniform(-4, 4) if rng.random() < 0.3 else 0.0
    if angle:
        # Rotate, then keep only the part the rotation left no black corners in.
        w, h = source.size
        sin = abs(math.sin(math.radians(angle)))
        dx, dy = math.ceil(h * sin), math.ceil(w * sin)
        source = source.rotate(angle, resample=Image.Resampling.BICUBIC).crop((dx, dy, w - dx, h - dy))
    w, h = source.size
    # The largest 3:2 box that fits, scaled down by a random factor, at a random place: crop, zoom and shift
    # (the box's corners are fractional, so the shift is sub-pixel too).
    full_w = min(w, h * WIDTH / HEIGHT)
    scale = rng.uniform(0.35, 1.0)
    crop_w, crop_h = full_w * scale, full_w * scale * HEIGHT / WIDTH
    left = rng.uniform(0, w - crop_w)
    top = rng.uniform(0, h - crop_h)
    img = source.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.82, 1.18))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.25))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    gains = [rng.uniform(0.92, 1.08) for _ in range(3)]  # a warm or cool cast
    img = Image.merge("RGB", [band.point(lambda v, g=g: min(255, round(v * g))) for band, g in zip(img.split(), gains)])
    # Upscaled photos are soft: sharpen and add grain, so the files carry the detail (and the bytes)
    # of a real camera JPEG.
    a = rng.uniform(0.3, 0.9)  # a 3x3 sharpening kernel (an unsharp mask costs ten times more at this size)
    img = img.filter(ImageFilter.Kernel((3, 3), (0, -a, 0, -a, 1 + 4 * a, -a, 0, -a, 0), scale=1))
    return ImageChops.add(img, _grain(rng, rng.uniform(3.0, 7.0)), scale=1.0, offset=-128)


_SOURCES: list | None = None


def _init_worker():
    global _SOURCES
    _SOURCES = load_sources()


def _write(task: tuple[int, str]) -> int:
    index, out = task
    dest = Path(out) / name_of(index)
    if dest.exists():
        return 0
    img = make_image(index, _SOURCES)
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    if dest.suffix == ".png":
        img.save(temp, "PNG")
    else:
        img.save(temp, "JPEG", quality=QUALITY)
    os.replace(temp, dest)
    return 1


def ensure(out: Path, count: int, jobs: int | None = None) -> dict:
    """Make images 0..count-1 in out that are missing; return what was made and what is there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (out / name_of(i)).exists()]
    started = time.perf_counter()
    made = 0
    if missing:
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(missing)))
        log(f"corpus: making {len(missing)} of {count} images in {out} with {jobs} processes")
        tasks = [(i, str(out)) for i in missing]
        if jobs == 1:
            _init_worker()
            made = sum(map(_write, tasks))
        else:
            with multiprocessing.Pool(jobs, initializer=_init_worker) as pool:
                made = sum(pool.imap_unordered(_write, tasks, chunksize=4))
    return {"made": made, "skipped": count - len(missing), "seconds": time.perf_counter() - started}


def files(out: Path, count: int) -> list[Path]:
    return [Path(out) / name_of(i) for i in range(count)]


def jpegs(out: Path, count: int) -> list[Path]:
    """The first `count` JPEGs of the corpus in out, making the corpus as large as that needs."""
    total = count + math.ceil(count / (PNG_EVERY - 1)) + 1
    ensure(out, total)
    return [p for p in files(out, total) if p.suffix == ".jpg"][:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="images in the corpus (default 500)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the folder (default images/bench-corpus)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes making images (default: cores)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    sources = load_sources()
    log("corpus sources: " + ", ".join(name for name, _ in sources))
    done = ensure(args.out, args.count, args.jobs)
    paths = files(args.out, args.count)
    sizes = [p.stat().st_size for p in paths]
    digests = {hashlib.sha1(p.read_bytes()).hexdigest() for p in paths}
    jpeg_sizes = [s for p, s in zip(paths, sizes) if p.suffix == ".jpg"]
    with Image.open(paths[0]) as first:
        dims = f"{first.width}x{first.height}"
    figures = {
        "images": len(paths),
        "jpegs": len(jpeg_sizes),
        "pngs": len(paths) - len(jpeg_sizes),
        "made": done["made"],
        "skipped": done["skipped"],
        "distinct_files": len(digests),
        "sources": len(sources),
        "total_mb": sum(sizes) / 1e6,
        "mean_jpeg_kb": (sum(jpeg_sizes) / len(jpeg_sizes) / 1e3) if jpeg_sizes else None,
        "make_seconds": done["seconds"],
        "made_per_s": done["made"] / done["seconds"] if done["made"] else None,
    }
    report(
        "corpus",
        [
            (f"images in {args.out} ({dims})", len(paths), None, None),
            ("  JPEG (quality 90)", len(jpeg_sizes), None, None),
            ("  PNG", len(paths) - len(jpeg_sizes), None, None),
            ("made now / skipped (already there)", f"{done['made']} / {done['skipped']}", None, None),
            ("distinct files (SHA-1)", len(digests), len(paths), ...),
            ("real photos used as sources", len(sources), None, None),
            ("total size MB", figures["total_mb"], None, None),
            ("mean JPEG size KB", figures["mean_jpeg_kb"], None, None),
            ("images made per second", figures["made_per_s"], None, None),
        ],
        figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

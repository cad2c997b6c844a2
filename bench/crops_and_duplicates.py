"""What smart crops, placeholders and duplicate finding cost, per image and for a folder of 10,000 photos.

    python bench/crops_and_duplicates.py [--images 200] [--rounds 3] [--folder 10000]

On the first --images JPEGs of bench/corpus.py (1920x1280), in one process and one thread (CPU: time.process_time(),
the median of --rounds rounds):
- a 256x256 cover thumbnail centred (today's crop) and with gravity=smart: what the attention map adds;
- a 256 px thumbnail with and without its BlurHash placeholder;
- an image's perceptual hash (what the duplicates action computes for each image);
- grouping --folder hashes (10,000 by default; see folder_of_hashes) at the default distance (10 bits), and
  ten times as many; the baseline is comparing every pair in numpy (one hash against all the later ones at a
  time), which the grouping avoids. scipy's import, once a worker, is left out.
A figure "at 10,000 images" is the per-image CPU times 10,000 (one core). Prints one table and appends one line to
bench/results.jsonl.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from _common import cpu_ms, log, report  # noqa: E402

import Image as engine  # noqa: E402  (the service's engine; _common put the repository on the path)
from imagejobs.processors import duplicates  # noqa: E402


def folder_of_hashes(own: list[int], count: int) -> dict[int, int]:
    """own, then up to count hashes: a tenth copies of the hashes before them with 0-8 bits flipped (resized,
    re-encoded or cropped copies, chains of them included), the rest unrelated photos' (random 64 bits: the
    corpus has too few photos of its own to fill a folder of 10,000)."""
    rng = random.Random(0)
    hashes = dict(enumerate(own))
    for key in range(len(own), count):
        if rng.random() < 0.1:
            value = hashes[rng.randrange(key)]
            for bit in rng.sample(range(64), rng.randint(0, 8)):
                value ^= 1 << bit
        else:
            value = rng.getrandbits(64)
        hashes[key] = value
    return hashes


def every_pair_seconds(hashes: dict[int, int], distance: int) -> float:
    """Comparing every pair in numpy (one row against all, for each row): the baseline."""
    values = np.fromiter(hashes.values(), dtype=np.uint64, count=len(hashes))
    started = time.perf_counter()
    for index in range(len(values)):
        np.flatnonzero(np.bitwise_count(values[index] ^ values[index + 1 :]) <= distance)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="corpus photos measured (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the median is kept (default 3)")
    parser.add_argument("--folder", type=int, default=10_000, help="hashes grouped (default 10,000)")
    args = parser.parse_args(argv)
    photos = corpus.jpegs(corpus.DEFAULT_OUT, args.images)
    rows, figures = [], {"images": args.images, "folder": args.folder, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "t.jpg"

        def cover(gravity):
            return lambda photo: engine.make_thumbnail(photo, out, 256, 256, "cover", gravity=gravity)

        log("crops: centre and smart")
        centre, smart = cpu_ms(cover("center"), photos, args.rounds), cpu_ms(cover("smart"), photos, args.rounds)
        log("placeholders")

        def thumbnail(placeholder):
            return lambda photo: engine.make_thumbnail(photo, out, 256, 256, placeholder=placeholder)

        plain, hashed = cpu_ms(thumbnail(False), photos, args.rounds), cpu_ms(thumbnail(True), photos, args.rounds)
    log("perceptual hashes")
    per_hash = cpu_ms(lambda photo: engine.perceptual_hash(photo, engine.DEFAULT_MAX_PIXELS), photos, args.rounds)
    own = [int(engine.perceptual_hash(photo, engine.DEFAULT_MAX_PIXELS), 16) for photo in photos]
    duplicates.group({0: 0, 1: 0}, 0)  # scipy imported
    grouping, baseline, groups = {}, {}, {}
    for count in (args.folder, args.folder * 10):
        log(f"grouping {count:,} hashes")
        hashes = folder_of_hashes(own, count)
        started = time.perf_counter()
        groups[count] = len(duplicates.group(hashes, duplicates.DEFAULT_DISTANCE))
        grouping[count] = time.perf_counter() - started
        baseline[count] = every_pair_seconds(hashes, duplicates.DEFAULT_DISTANCE)
    rows += [
        ("cover 256 px, centre, CPU ms/image", centre, None, None),
        ("cover 256 px, gravity=smart, CPU ms/image", smart, centre, ...),
        ("thumbnail 256 px, CPU ms/image", plain, None, None),
        ("thumbnail 256 px with its placeholder, CPU ms/image", hashed, plain, ...),
        ("placeholder alone, CPU ms/image", hashed - plain, None, None),
        ("perceptual hash, CPU ms/image", per_hash, None, None),
        (f"at {args.folder:,} images: smart crops' extra CPU, s", (smart - centre) * args.folder / 1000, None, None),
        (f"at {args.folder:,} images: placeholders, CPU s", (hashed - plain) * args.folder / 1000, None, None),
        (f"at {args.folder:,} images: hashes, CPU s", per_hash * args.folder / 1000, None, None),
    ]
    for count in grouping:
        rows += [
            (f"grouping {count:,} hashes, s (baseline: every pair in numpy)", grouping[count], baseline[count], ...),
            (f"groups found in {count:,}", groups[count], None, None),
        ]
    figures |= {
        "cover_centre_ms": centre,
        "cover_smart_ms": smart,
        "thumbnail_ms": plain,
        "thumbnail_with_placeholder_ms": hashed,
        "hash_ms": per_hash,
        "grouping_s": grouping,
        "every_pair_s": baseline,
        "groups": groups,
    }
    report("crops_and_duplicates", rows, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A folder submitted again: the first run, an unchanged re-run, and a re-run with 1% new images.

    python bench/reuse.py [--count 10000] [--new-share 0.01] [--corpus images/bench-corpus] [--workers CORES]

The folder: --count names in one folder of a temporary images root, hard links to the corpus's 200
1920x1280 JPEGs in turn (so 10,000 paths cost no disk; each is its own image to the service, its own
thumbnail and its own remembered result). The service: `python run.py --workers <cores> --no-classifier`
(_common.service), its IMAGES_DIR that root. Each run is POST /imageapi imagePath=<folder> width=100
height=100, then GET /result/<id>?wait=30 until it ends, timed from just before the POST:

1. first: every image is thumbnailed (none remembered yet);
2. again: the folder unchanged: every entry must say "reused": true;
3. new: --new-share of --count more images, copies (new files, new inodes, not links: a link would change
   the shared inode's ctime and send every image sharing it to the content check) under new names: those
   must be made, every other entry reused.

Targets (issue 18): first / again >= 20, and the new run costing about its share of the first run plus the
checks of an unchanged run: new / (share * first + again) near 1. Figures are wall-clock (one run each, so a
busy machine shows up: loadavg_1m_at_start/end) and the service's CPU seconds (run.py and every process under
it: the API, the workers, Redis), which a busy machine disturbs far less. run.py is stopped with SIGINT at
the end, whatever happens.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from _common import Client, link_or_copy, log, post_form, report, service, tree_cpu, wait_result  # noqa: E402

TARGET_AGAIN = 20
SIZE = 100


def run_folder(client: Client, folder: str, expected: int, pid: int) -> tuple[float, float, int]:
    """Seconds for one run of the folder, the CPU seconds the service (process pid and its children) spent
    on it, and how many of its entries were reused."""
    cpu_before, _ = tree_cpu(pid)
    started = time.perf_counter()
    status, body = post_form(client, "/imageapi", {"imagePath": folder, "width": SIZE, "height": SIZE})
    assert status == 202, (status, body)
    answer = wait_result(client, body["jobId"], deadline_s=3600)
    seconds = time.perf_counter() - started
    cpu = tree_cpu(pid)[0] - cpu_before
    result = answer.get("result") or {}
    if answer["status"] != "finished" or result.get("total") != expected or result.get("failed"):
        raise RuntimeError(
            f"the run did not finish cleanly: {answer.get('status')}, total={result.get('total')}, "
            f"failed={result.get('failed')}, error={answer.get('error')}"
        )
    return seconds, cpu, sum(1 for entry in result["images"] if entry.get("reused"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="images in the folder (default 10000)")
    parser.add_argument("--new-share", type=float, default=0.01, help="share of new images in run 3 (default 0.01)")
    parser.add_argument("--corpus", type=Path, default=corpus.DEFAULT_OUT, help="corpus folder, made if missing")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="service workers (default: cores)")
    args = parser.parse_args(argv)
    if not (1 <= args.count <= 100_000 and 0 < args.new_share <= 1 and args.workers >= 1):
        parser.error("--count must be 1..100000, --new-share in (0, 1], --workers >= 1")

    sources = corpus.jpegs(args.corpus, 200)
    new_count = max(1, round(args.count * args.new_share))
    load_at_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-reuse-"))
    try:
        images_root, folder = tmp / "images", "photos"
        (images_root / folder).mkdir(parents=True)
        for number in range(args.count):
            link_or_copy(sources[number % len(sources)], images_root / folder / f"{number:06d}.jpg")
        for path in sources:  # every run starts with the files in the page cache
            path.read_bytes()
        with service(tmp / "work", images_root, tmp / "logs", args.workers) as running:
            client, pid = Client(running.port), running.process.pid
            try:
                log(f"first run: {args.count} images")
                first, first_cpu, first_reused = run_folder(client, folder, args.count, pid)
                log(f"first run: {first:.1f} s, {first_reused} reused; the same folder again")
                again, again_cpu, again_reused = run_folder(client, folder, args.count, pid)
                log(f"again: {again:.2f} s, {again_reused} reused; {new_count} new images")
                for number in range(new_count):
                    shutil.copyfile(sources[number % len(sources)], images_root / folder / f"new-{number:06d}.jpg")
                new, new_cpu, new_reused = run_folder(client, folder, args.count + new_count, pid)
                log(f"new: {new:.2f} s, {new_reused} reused")
            finally:
                client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    assert first_reused == 0 and again_reused == args.count and new_reused == args.count, (
        first_reused,
        again_reused,
        new_reused,
    )
    expected_new = args.new_share * first + again
    figures = {
        "images": args.count,
        "new_images": new_count,
        "workers": args.workers,
        "first_s": first,
        "again_s": again,
        "new_s": new,
        "first_cpu_s": first_cpu,
        "again_cpu_s": again_cpu,
        "new_cpu_s": new_cpu,
        "first_over_again_cpu": first_cpu / again_cpu,
        "first_over_again": first / again,
        "target_first_over_again": TARGET_AGAIN,
        "target_met": first / again >= TARGET_AGAIN,
        "new_over_share_plus_checks": new / expected_new,
        "loadavg_1m_at_start": load_at_start,
    }
    verdict = "met" if first / again >= TARGET_AGAIN else "MISSED"
    report(
        "reuse",
        [
            (f"first run, s ({args.count} x 1920x1280 JPEG -> {SIZE}px)", first, None, None),
            (f"unchanged re-run, s (all {args.count} reused)", again, first, ...),
            (f"first / re-run (target >= {TARGET_AGAIN}: {verdict})", first / again, TARGET_AGAIN, ...),
            (f"re-run with {new_count} new, s", new, expected_new, ...),
            (f"  baseline: {args.new_share:.0%} of the first run + the re-run's checks, s", expected_new, None, None),
            ("re-run, ms per reused image", 1000 * again / args.count, 1000 * first / args.count, ...),
            ("service CPU, first run, s", first_cpu, None, None),
            ("service CPU, unchanged re-run, s", again_cpu, first_cpu, ...),
            (f"service CPU, re-run with {new_count} new, s", new_cpu, args.new_share * first_cpu + again_cpu, ...),
        ],
        figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

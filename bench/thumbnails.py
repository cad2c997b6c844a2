"""Thumbnails per second: a plain Pillow loop, the same loop on every core, and the service.

    python bench/thumbnails.py [--count 200] [--corpus images/bench-corpus] [--repeat 3] [--workers CORES] [--size 100]

(a) one process: Image.open(p); .thumbnail((size, size)); save as JPEG to a temporary folder;
(b) the same function in multiprocessing.Pool(os.cpu_count()) (pool.map, its default chunking), the
    most this machine can do with Pillow;
(c) the service: `python run.py --port <free> --workers <cores> --no-classifier` in a temporary
    working folder, IMAGES_DIR a temporary images root holding the corpus (hard links or copies: the
    service refuses symlinks that leave its root), LOGS_DIR a temporary folder. After one warm-up batch,
    POST /imageapi imagePath=<folder> width=size height=size force=true (each repeat does the work, none
    reuses the one before), then GET /result/<id>?wait=30 until it is
    finished or failed; the time is from just before the POST to the finished result.
Each is run --repeat times on warm files (read once first) and the median is reported. Targets:
c/b >= 0.85. run.py is stopped with SIGINT at the end, whatever happens.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from _common import Client, chunk_times, link_or_copy, log, post_form, report, service, wait_result  # noqa: E402

TARGET = 0.85
WARMUP_IMAGES = 32


def thumbnail(task: tuple[str, str, int]) -> None:
    """The plain loop's body: open, thumbnail, save as JPEG."""
    source, out_dir, size = task
    img = Image.open(source)
    img.thumbnail((size, size))
    img.save(os.path.join(out_dir, os.path.basename(source)[:-4] + ".jpg"), "JPEG")
    img.close()


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def parse_time(stamp: str | None) -> float | None:
    """Seconds since the epoch of an ISO time the API gave (UTC, with or without its zone)."""
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run_service(images_root: Path, folder: str, tmp: Path, workers: int, size: int, count: int, repeat: int) -> dict:
    logs = tmp / "logs"
    with service(tmp / "work", images_root, logs, workers) as running:
        client = Client(running.port)
        try:
            log("service: warm-up batch")
            status, body = post_form(client, "/imageapi", {"imagePath": "warmup", "width": size, "height": size})
            assert status == 202, (status, body)
            wait_result(client, body["jobId"])
            runs = []
            for number in range(repeat):
                wall0, started = time.time(), time.perf_counter()
                status, body = post_form(
                    client, "/imageapi", {"imagePath": folder, "width": size, "height": size, "force": "true"}
                )
                posted = time.perf_counter()
                assert status == 202, (status, body)
                answer = wait_result(client, body["jobId"])
                elapsed = time.perf_counter() - started
                result = answer.get("result") or {}
                if answer["status"] != "finished" or result.get("total") != count or result.get("failed"):
                    raise RuntimeError(
                        f"the batch did not finish cleanly: {answer.get('status')}, "
                        f"total={result.get('total')}, failed={result.get('failed')}, error={answer.get('error')}"
                    )
                time.sleep(0.3)  # the workers' log lines of the last chunk
                chunks = chunk_times(logs, body["jobId"])
                first_start, ended = parse_time(answer.get("startedAt")), parse_time(answer.get("endedAt"))
                runs.append(
                    {
                        "seconds": elapsed,
                        "post_ms": 1000 * (posted - started),
                        "to_first_chunk_ms": 1000 * (first_start - wall0) if first_start else None,
                        "span_s": (ended - first_start) if first_start and ended else None,
                        "after_end_ms": 1000 * (wall0 + elapsed - ended) if ended else None,
                        "chunks": len(chunks),
                        "chunk_work_s": sum(chunks),
                    }
                )
                log(
                    f"service run {number + 1}: {count / elapsed:.1f} images/s "
                    f"({elapsed:.2f} s; POST {runs[-1]['post_ms']:.0f} ms, "
                    f"{len(chunks)} chunks, chunk work {sum(chunks):.2f} s)"
                )
        finally:
            client.close()
    return min(runs, key=lambda run: abs(run["seconds"] - statistics.median(r["seconds"] for r in runs)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="HD JPEGs to thumbnail (default 200)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=corpus.DEFAULT_OUT,
        help="corpus folder, made if missing (default images/bench-corpus)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each of a, b, c; the median is reported (default 3)"
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="pool processes and service workers (default: cores)"
    )
    parser.add_argument("--size", type=int, default=100, help="thumbnail box, pixels (default 100)")
    args = parser.parse_args(argv)
    if not (1 <= args.count <= 5000 and 1 <= args.repeat <= 10 and args.workers >= 1):
        parser.error("--count must be 1..5000, --repeat 1..10, --workers >= 1")

    sources = corpus.jpegs(args.corpus, args.count)
    tmp = Path(tempfile.mkdtemp(prefix="bench-thumbnails-"))
    try:
        images_root, folder = tmp / "images", "bench"
        (images_root / folder).mkdir(parents=True)
        (images_root / "warmup").mkdir()
        for path in sources:
            link_or_copy(path, images_root / folder / path.name)
        for path in sources[:WARMUP_IMAGES]:
            link_or_copy(path, images_root / "warmup" / path.name)
        files = sorted(str(p) for p in (images_root / folder).iterdir())
        for path in files:  # every run starts with the files in the page cache
            Path(path).read_bytes()
        out = tmp / "out"
        out.mkdir()
        tasks = [(path, str(out), args.size) for path in files]

        log(f"(a) one process, {len(tasks)} images x {args.repeat}")
        thumbnail(tasks[0])
        a_times = [timed(lambda: [thumbnail(task) for task in tasks]) for _ in range(args.repeat)]

        log(f"(b) Pool({args.workers}), {len(tasks)} images x {args.repeat}")
        with Pool(args.workers) as pool:
            pool.map(thumbnail, tasks[: 2 * args.workers], chunksize=1)  # warm: the processes exist and imported PIL
            b_times = [timed(lambda: pool.map(thumbnail, tasks)) for _ in range(args.repeat)]

        log(f"(c) the service, {args.workers} workers, {len(tasks)} images x {args.repeat}")
        run = run_service(images_root, folder, tmp, args.workers, args.size, len(tasks), args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(sources)
    a, b, c = n / statistics.median(a_times), n / statistics.median(b_times), n / run["seconds"]
    per_chunk_overhead = None
    if run["span_s"] and run["chunks"]:
        # Worker time per chunk not spent inside the chunk's own loop: RQ's per-job cost and waiting.
        per_chunk_overhead = 1000 * (run["span_s"] * args.workers - run["chunk_work_s"]) / run["chunks"]
    figures = {
        "images": n,
        "workers": args.workers,
        "repeat": args.repeat,
        "size": args.size,
        "a_images_per_s": a,
        "b_images_per_s": b,
        "c_images_per_s": c,
        "c_over_a": c / a,
        "c_over_b": c / b,
        "b_over_a": b / a,
        "target_c_over_b": TARGET,
        "target_met": c / b >= TARGET,
        "a_seconds": a_times,
        "b_seconds": b_times,
        "c_seconds": run["seconds"],
        "c_post_ms": run["post_ms"],
        "c_to_first_chunk_ms": run["to_first_chunk_ms"],
        "c_span_s": run["span_s"],
        "c_after_end_ms": run["after_end_ms"],
        "c_chunks": run["chunks"],
        "c_chunk_work_s": run["chunk_work_s"],
        "c_worker_ms_per_chunk_outside_loop": per_chunk_overhead,
    }
    verdict = "met" if c / b >= TARGET else "MISSED"
    report(
        "thumbnails",
        [
            (f"(a) one process, images/s ({n} x 1920x1280 JPEG -> {args.size}px)", a, None, None),
            (f"(b) Pool({args.workers}), images/s", b, a, ...),
            (f"(c) service, {args.workers} workers, images/s", c, b, ...),
            ("(c) service vs one process (c/a)", c, a, ...),
            (f"target c/b >= {TARGET}: {verdict}", c / b, TARGET, ...),
            ("(c) POST answered, ms", run["post_ms"], None, None),
            ("(c) POST to first chunk started, ms", run["to_first_chunk_ms"], None, None),
            ("(c) first chunk start to batch job end, s", run["span_s"], None, None),
            (
                f"(c) chunk loops, summed / {args.workers} workers, s",
                run["chunk_work_s"] / args.workers,
                run["span_s"],
                ...,
            ),
            ("(c) batch job end to client has result, ms", run["after_end_ms"], None, None),
            (f"(c) worker ms per chunk outside its loop ({run['chunks']} chunks)", per_chunk_overhead, None, None),
        ],
        figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

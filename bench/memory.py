"""Memory under load: the service's RSS while it makes 10,000 thumbnails, and how much it grows.

    python bench/memory.py [--images 10000] [--batch 500] [--workers 2] [--interval 0.5] [--corpus images/bench-corpus]

The corpus folder (--batch images, JPEGs and its few PNGs; made like `python bench/corpus.py --count 500`
if missing) goes into a temporary images root as hard links (or copies). The service is
`python run.py --port <free> --workers <--workers>` with the classify worker (idle here), in a
temporary working folder. The folder is POSTed (width=100, force=true: every batch does the work, none is
reused from the one before) and awaited (GET /result/<id>?wait=30)
batch after batch, one at a time, until --images images are done (20 batches of 500 by default);
each batch must finish with failed = 0. A thread samples the RSS of every process of the service
(psutil) every --interval seconds. It reports, per process (the API as gunicorn master + workers,
summed): RSS after the first 1,000 images (the first batch boundary at or after min(1000, images/2)),
after the last, growth in %, and the peak. Target: growth <= 10% for the API, each image worker and
the classifier. Redis is shown too (it keeps every result RESULT_TTL = 500 s, so it grows by design).
About 2 minutes on 2 cores; --images shortens it. run.py is stopped with SIGINT at the end.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import engine  # noqa: E402
from _common import Client, Processes, RssSampler, link_or_copy, log, post_form, report, service, wait_result  # noqa: E402

TARGET_GROWTH_PCT = 10.0
EARLY_IMAGES = 1000
DEADLINE_S = 20 * 60  # the whole loop of batches, whatever --images says
READY_TIMEOUT = 600


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="thumbnails to make in all (default 10000)")
    parser.add_argument(
        "--batch", type=int, default=500, help="images in the corpus folder POSTed each time (default 500)"
    )
    parser.add_argument("--workers", type=int, default=2, help="run.py --workers (default 2)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples (default 0.5)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=corpus.DEFAULT_OUT,
        help="corpus folder, made if missing (default images/bench-corpus)",
    )
    parser.add_argument(
        "--source",
        choices=("corpus", "jpeg12", "png", "webp"),
        default="corpus",
        help="corpus: its 1920x1280 photos; jpeg12, png, webp: --batch of them as bench/engine.py's sources of that "
        "kind (12 MP phone-size JPEGs; 2.5 MP PNGs and WebPs, which libvips shrinks)",
    )
    parser.add_argument("--box", type=int, default=100, help="the thumbnails' box, px (default 100)")
    args = parser.parse_args(argv)
    if not (
        1 <= args.batch <= 5000
        and args.batch <= args.images <= 200_000
        and args.workers >= 1
        and 0.05 <= args.interval <= 10
    ):
        parser.error("--batch must be 1..5000, --images batch..200000, --workers >= 1, --interval 0.05..10")

    batches = -(-args.images // args.batch)
    early_images = args.batch * -(-min(EARLY_IMAGES, args.images // 2 or 1) // args.batch)  # a batch boundary
    if args.source != "corpus":
        sources = engine.make_sources(args.source, corpus.jpegs(args.corpus, args.batch))
    else:
        corpus.ensure(args.corpus, args.batch)
        sources = corpus.files(args.corpus, args.batch)
    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        images_root = tmp / "images"
        (images_root / "corpus").mkdir(parents=True)
        for path in sources:
            link_or_copy(path, images_root / "corpus" / path.name)
            path.read_bytes()
        with service(
            tmp / "work", images_root, tmp / "logs", args.workers, classifier=True, ready_timeout=READY_TIMEOUT
        ) as running:
            client = Client(running.port, timeout=60)
            processes = Processes(running.process.pid)
            done, seconds, early, last, start = 0, [], None, None, None
            deadline = time.monotonic() + DEADLINE_S
            try:
                with RssSampler(processes, args.interval) as sampler:
                    start = sampler.sample()
                    log(
                        f"{batches} batches of {args.batch}; RSS at start: "
                        + ", ".join(f"{k} {v:.0f} MB" for k, v in start.items())
                    )
                    for number in range(batches):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"only {done} of {args.images} images were done within {DEADLINE_S} s")
                        started = time.perf_counter()
                        status, body = post_form(
                            client,
                            "/imageapi",
                            {"imagePath": "corpus", "width": args.box, "height": args.box, "force": "true"},
                        )
                        if status != 202:
                            raise RuntimeError(f"POST answered {status}: {body}")
                        answer = wait_result(client, body["jobId"], wait=30, deadline_s=300)
                        result = answer.get("result") or {}
                        if (
                            answer["status"] != "finished"
                            or result.get("total") != len(sources)
                            or result.get("failed")
                        ):
                            raise RuntimeError(
                                f"batch {number + 1} did not finish cleanly: {answer.get('status')}, "
                                f"total={result.get('total')}, failed={result.get('failed')}, "
                                f"error={answer.get('error')}"
                            )
                        seconds.append(time.perf_counter() - started)
                        done += len(sources)
                        if early is None and done >= early_images:
                            early = sampler.sample()
                        if number + 1 == batches:
                            last = sampler.sample()
                        if (number + 1) % 5 == 0 or number + 1 == batches:
                            log(
                                f"batch {number + 1}/{batches}: {done} images, "
                                f"{len(sources) / seconds[-1]:.0f} images/s; "
                                + ", ".join(f"{k} {v:.0f} MB" for k, v in sampler.samples[-1][1].items())
                            )
                peak, replaced = sampler.peak, sorted(processes.gone)
            finally:
                client.close()
            restarts = [line.strip() for line in running.notable if "starting it again" in line]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    watched = ["api (master + workers)"] + [f"image worker {i + 1}" for i in range(args.workers)] + ["classifier"]
    growth = {
        label: 100 * (last[label] / early[label] - 1)
        for label in watched + ["redis-server"]
        if label in early and label in last
    }
    worst = max((growth[label] for label in watched if label in growth), default=float("nan"))
    met = worst <= TARGET_GROWTH_PCT and not replaced
    figures = {
        "images": done,
        "source": args.source,
        "box": args.box,
        "batch": len(sources),
        "batches": batches,
        "workers": args.workers,
        "interval_s": args.interval,
        "early_images": early_images,
        "images_per_s_median_batch": len(sources) / statistics.median(seconds),
        "rss_mb_start": start,
        "rss_mb_early": early,
        "rss_mb_last": last,
        "rss_mb_peak": peak,
        "growth_pct": growth,
        "worst_growth_pct": worst,
        "processes_gone": replaced,
        "worker_restarts": restarts,
        "target_growth_pct": TARGET_GROWTH_PCT,
        "target_met": met,
        "loadavg_1m_at_start": load_start,
    }
    rows = []
    for label in watched + ["redis-server"]:
        if label not in growth:
            rows.append((f"{label}: not seen at both points", None, None, None))
            continue
        rows += [
            (f"{label}: RSS after {done} vs after {early_images} images, MB", last[label], early[label], ...),
            (
                f"{label}: growth, % (baseline: target {TARGET_GROWTH_PCT:g}%)"
                if label != "redis-server"
                else f"{label}: growth, % (keeps results RESULT_TTL s: grows by design)",
                growth[label],
                TARGET_GROWTH_PCT if label != "redis-server" else None,
                ... if label != "redis-server" else None,
            ),
            (f"{label}: peak RSS over the run, MB (baseline: at start)", peak.get(label), start.get(label), ...),
        ]
    rows += [
        (f"thumbnails/s, median batch of {len(sources)}", len(sources) / statistics.median(seconds), None, None),
        ("processes that exited during the run (run.py restarts them)", len(replaced), None, None),
        (
            f"target growth <= {TARGET_GROWTH_PCT:g}% (API, image workers, classifier): {'met' if met else 'MISSED'}",
            worst,
            TARGET_GROWTH_PCT,
            ...,
        ),
    ]
    report("memory", rows, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

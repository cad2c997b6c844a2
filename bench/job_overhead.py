"""What one job costs: RQ's own per-job time, and submit-to-result latency of `size` jobs through the API.

    python bench/job_overhead.py [--jobs 1000] [--requests 300] [--concurrency 8] [--seconds 20]
                                 [--service-workers 2] [--bare-workers 1] [--no-fork]

1. RQ per job. A private redis-server (embedded_redis.start on a free port, appendonly off) gets
   --jobs jobs of bench/noop.py:noop (JSON serializer); one worker then empties the queue in burst
   mode, in its own process (bench/rq_burst.py): (i) rq.SimpleWorker, as worker.py runs; (ii) the
   forking rq.Worker. ms/job = the burst's time / jobs.
2. The service. `python run.py --workers 2 --no-classifier` in a temporary folder, one small JPEG in a
   temporary images root; after 20 warm-up rounds, --requests sequential rounds, each way a client can
   get a result: two requests (POST /imageapi?action=size with imagePath=the JPEG, then
   GET /result/<id>?wait=5) and one (the same POST with wait=5); p50/p95/p99 of the time from sending
   the POST to having the result. Then throughput: such rounds from --concurrency client threads
   for --seconds, jobs/s. The targets are read off the one-request round, the like of bare RQ's.
3. The bare baseline: a second private redis-server (AOF on, like run.py's) and `python worker.py
   images` (--bare-workers processes) with REDIS_URL pointing at it; the same rounds as
   queue.enqueue("imagejobs.tasks.run_single", "size", image, {}) + job.latest_result(timeout=5), no HTTP.
Targets: service p50 <= 5 ms; >= 500 size jobs/s.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from redis import Redis
from rq import Queue, Worker
from rq.results import Result
from rq.serializers import JSONSerializer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH,
    ROOT,
    Client,
    Processes,
    cpu_delta,
    cpu_ms_per_job,
    cpu_usage,
    log,
    own_redis,
    percentile,
    post_form,  # noqa: E402
    record_stages,
    report,
    service,
    stop_process,
)

TARGET_P50_MS = 5.0
TARGET_JOBS_PER_S = 500.0
WARMUP = 20
IMAGE = "tiny.jpg"


# --- 1. RQ's own per-job cost ---------------------------------------------------------------------


def burst(url: str, queue_name: str, kind: str, jobs: int) -> dict:
    redis = Redis.from_url(url)
    queue = Queue(queue_name, connection=redis, serializer=JSONSerializer)
    started = time.perf_counter()
    for _ in range(jobs):
        queue.enqueue("noop.noop", result_ttl=600)
    enqueue_s = time.perf_counter() - started
    runner = subprocess.run(
        [sys.executable, str(BENCH / "rq_burst.py"), url, queue_name, kind],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    if runner.returncode != 0:
        raise RuntimeError(f"the {kind} worker failed: {runner.stderr[-2000:]}")
    outcome = json.loads(runner.stdout.strip().splitlines()[-1])
    if outcome["succeeded"] != jobs or queue.count:
        raise RuntimeError(f"the {kind} worker ran {outcome['succeeded']} of {jobs} jobs ({outcome['failed']} failed)")
    redis.close()
    return {"ms_per_job": 1000 * outcome["seconds"] / jobs, "enqueue_ms_per_job": 1000 * enqueue_s / jobs}


# --- rounds: latency and throughput ----------------------------------------------------------------


def latencies(rounds: dict, count: int) -> dict:
    """ms of `count` sequential rounds of each kind in `rounds` (name -> one_round), the kinds taking turns so
    that each meets the same machine and the same Redis, after WARMUP rounds of each that are not counted."""
    times = {name: [] for name in rounds}
    for number in range(WARMUP + count):
        for name, one_round in rounds.items():
            started = time.perf_counter()
            one_round()
            if number >= WARMUP:
                times[name].append(1000 * (time.perf_counter() - started))
    return times


def throughput(make_round, seconds: float, threads: int) -> tuple[float, int]:
    """(jobs per second, rounds) when `threads` clients run rounds back to back for `seconds` (rounds under
    way at the end are finished and counted, and the time they took with them)."""
    done = [0]
    lock = threading.Lock()
    errors = []
    stop_at = time.monotonic() + seconds

    def client():
        try:
            one_round, close = make_round()
            try:
                while time.monotonic() < stop_at:
                    one_round()
                    with lock:
                        done[0] += 1
            finally:
                close()
        except Exception as exc:  # reported below; one failing client must not hang the others
            errors.append(exc)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client threads failed, the first with: {errors[0]!r}")
    if any(thread.is_alive() for thread in workers):
        raise TimeoutError(f"client threads were still running {seconds + 60:.0f} s after the start")
    return done[0] / elapsed, done[0]


# --- 2. the service ---------------------------------------------------------------------------------------

WAYS = ("one", "two")  # requests a round: POST ...&wait=5; or POST, then GET /result?wait=5


def service_rounds(tmp: Path, images: Path, workers: int, requests: int, concurrency: int, seconds: float) -> dict:
    """Both ways a client gets a result. The sequential rounds of the two ways alternate, so both meet the
    same machine and the same Redis; then each way's throughput run."""
    with service(tmp / "work", images, tmp / "logs", workers) as running:
        stages = {way: {"post": [], "queued": [], "ran": [], "after": []} for way in WAYS}

        def make_round(way: str, record: bool = False):
            client = Client(running.port, timeout=15)

            def one_round():
                wall, started = time.time(), time.perf_counter()
                fields = {"imagePath": IMAGE, **({"wait": "5"} if way == "one" else {})}
                status, answer = post_form(client, "/imageapi?action=size", fields)
                posted = time.perf_counter()
                if way == "two":
                    if status != 202:
                        raise RuntimeError(f"POST answered {status}: {answer}")
                    status, answer = client.request("GET", f"/result/{answer['jobId']}?wait=5")
                done = time.perf_counter()
                if status != 200 or answer.get("status") != "finished":
                    raise RuntimeError(f"the {way}-request round answered {status}: {answer}")
                if record:
                    record_stages(stages[way], answer, wall, started, posted, done)

            return one_round, client.close

        rounds = {way: make_round(way, record=True) for way in WAYS}
        try:
            times = latencies({way: one_round for way, (one_round, _) in rounds.items()}, requests)
        finally:
            for _, close in rounds.values():
                close()
        figures = {}
        processes = Processes(running.process.pid)
        for way in WAYS:
            log(
                f"service, {way} request(s) a round: {requests} sequential rounds, "
                f"p50 {percentile(times[way], 50):.1f} ms; "
                f"throughput with {concurrency} clients"
            )
            before = cpu_usage(processes)
            rate, ended = throughput(lambda way=way: make_round(way), seconds, concurrency)
            cpu = cpu_ms_per_job(cpu_delta(before, cpu_usage(processes)), ended)
            counted = {k: v[WARMUP:] for k, v in stages[way].items()}
            figures[way] = {
                "times": times[way],
                "rate": rate,
                "cpu_ms_per_job": cpu,
                **{k: statistics.median(v) if v else None for k, v in counted.items()},
            }
    return figures


# --- 3. bare RQ, same job function, no HTTP --------------------------------------------------------------


def bare_rounds(tmp: Path, images: Path, workers: int, requests: int, concurrency: int, seconds: float) -> dict:
    with own_redis(tmp / "redis-bare", appendonly=True) as url:
        env = {**os.environ, "REDIS_URL": url, "IMAGES_DIR": str(images), "LOGS_DIR": str(tmp / "logs-bare")}
        processes = [
            subprocess.Popen(
                [sys.executable, "worker.py", "images"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            redis = Redis.from_url(url)
            deadline = time.monotonic() + 30
            while Worker.count(connection=redis) < workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError("worker.py did not start (see its log in the temporary logs folder)")
                time.sleep(0.05)

            def make_round():
                queue = Queue("images", connection=redis, serializer=JSONSerializer)

                def one_round():
                    job = queue.enqueue("imagejobs.tasks.run_single", "size", IMAGE, {})
                    result = job.latest_result(timeout=5)
                    if result is None or result.type != Result.Type.SUCCESSFUL:
                        raise RuntimeError(f"bare size job {job.id} ended with {result and result.type}")

                return one_round, lambda: None

            one_round, _ = make_round()
            times = latencies({"bare": one_round}, requests)["bare"]
            log(
                f"bare RQ: {requests} sequential rounds, p50 {percentile(times, 50):.1f} ms; "
                f"throughput with {concurrency} clients"
            )
            rate, _ = throughput(make_round, seconds, concurrency)
            redis.close()
        finally:
            for process in processes:
                stop_process(process)
    return {"times": times, "rate": rate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="no-op jobs per worker kind (default 1000)")
    parser.add_argument("--requests", type=int, default=300, help="sequential size rounds (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads of the throughput run (default 8)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each throughput run (default 20)")
    parser.add_argument("--service-workers", type=int, default=2, help="run.py --workers (default 2)")
    parser.add_argument(
        "--bare-workers", type=int, default=1, help="worker.py processes of the bare baseline (default 1)"
    )
    parser.add_argument("--no-fork", action="store_true", help="skip the forking rq.Worker")
    args = parser.parse_args(argv)
    if not (
        1 <= args.jobs <= 20000
        and 1 <= args.requests <= 5000
        and 1 <= args.concurrency <= 64
        and 1 <= args.seconds <= 600
        and args.service_workers >= 1
        and args.bare_workers >= 1
    ):
        parser.error("an option is out of range")

    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    try:
        images = tmp / "images"
        images.mkdir()
        Image.new("RGB", (64, 48), (120, 160, 200)).save(images / IMAGE, "JPEG", quality=90)

        log(f"RQ per-job cost: {args.jobs} no-op jobs, SimpleWorker{'' if args.no_fork else ' then Worker (fork)'}")
        with own_redis(tmp / "redis-noop", appendonly=False) as url:
            simple = burst(url, "bench-simple", "simple", args.jobs)
            fork = None if args.no_fork else burst(url, "bench-fork", "fork", args.jobs)

        log(f"service: run.py with {args.service_workers} workers")
        svc = service_rounds(tmp, images, args.service_workers, args.requests, args.concurrency, args.seconds)
        log(f"bare RQ: own redis + {args.bare_workers} worker.py")
        bare = bare_rounds(tmp, images, args.bare_workers, args.requests, args.concurrency, args.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    one, two = svc["one"], svc["two"]
    cpu_total = sum(one["cpu_ms_per_job"].values())
    cpu_bound = os.cpu_count() * 1000 / cpu_total
    runs = (("service", one), ("service_two", two), ("bare", bare))
    p = {name: {q: percentile(run["times"], q) for q in (50, 95, 99)} for name, run in runs}
    figures = {
        "jobs": args.jobs,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "throughput_seconds": args.seconds,
        "service_workers": args.service_workers,
        "bare_workers": args.bare_workers,
        "simple_ms_per_job": simple["ms_per_job"],
        "fork_ms_per_job": fork and fork["ms_per_job"],
        "fork_over_simple": fork and fork["ms_per_job"] / simple["ms_per_job"],
        "enqueue_ms_per_job": simple["enqueue_ms_per_job"],
        # service_*: one request a round (POST ...&wait=5), like bare RQ's enqueue + latest_result(timeout);
        # service_two_*: two (POST, then GET /result?wait=5).
        **{f"{name}_p{q}_ms": v for name, qs in p.items() for q, v in qs.items()},
        **{f"{name}_mean_ms": statistics.mean(run["times"]) for name, run in runs},
        # Of the two-request round, from the result's enqueuedAt (job created in the API), startedAt (RQ's execution
        # record made by the worker, after dequeuing) and endedAt (RQ's ended_at, set when the function returned).
        "service_post_ms_p50": two["post"],
        "service_created_to_execution_ms_p50": two["queued"],
        "service_execution_to_returned_ms_p50": two["ran"],
        "service_returned_to_client_ms_p50": two["after"],
        "service_jobs_per_s": one["rate"],
        "service_two_jobs_per_s": two["rate"],
        "bare_jobs_per_s": bare["rate"],
        # CPU of every process (the client's included) per job in the one-request throughput run, and the jobs/s
        # this machine's cores could give at that cost with nothing else running.
        "service_cpu_ms_per_job": one["cpu_ms_per_job"],
        "service_cpu_ms_per_job_total": cpu_total,
        "cpu_bound_jobs_per_s": cpu_bound,
        "target_p50_ms": TARGET_P50_MS,
        "target_jobs_per_s": TARGET_JOBS_PER_S,
        "target_p50_met": p["service"][50] <= TARGET_P50_MS,
        "target_jobs_per_s_met": one["rate"] >= TARGET_JOBS_PER_S,
    }
    rows = [
        (f"RQ SimpleWorker, ms/job ({args.jobs} no-op jobs, burst)", simple["ms_per_job"], None, None),
    ]
    if fork:
        rows.append(("RQ Worker (fork per job), ms/job", fork["ms_per_job"], simple["ms_per_job"], ...))
    rows.append(("RQ queue.enqueue, ms/job (client side)", simple["enqueue_ms_per_job"], None, None))
    for q in (50, 95, 99):
        rows.append(
            (f"size job submit->result p{q}, ms: service (1 request) vs bare RQ", p["service"][q], p["bare"][q], ...)
        )
    rows.append(
        (
            "size job submit->result p50, ms: service, 2 requests (POST, GET wait)",
            p["service_two"][50],
            p["bare"][50],
            ...,
        )
    )
    rows += [
        ("  2 requests: POST answered (p50), ms", two["post"], None, None),
        ("  2 requests: job created -> worker's execution began (p50), ms", two["queued"], None, None),
        ("  2 requests: execution began -> job function returned (p50), ms", two["ran"], None, None),
        ("  2 requests: job function returned -> client has result (p50), ms", two["after"], None, None),
        (
            f"target p50 <= {TARGET_P50_MS:g} ms: {'met' if p['service'][50] <= TARGET_P50_MS else 'MISSED'}",
            p["service"][50],
            TARGET_P50_MS,
            ...,
        ),
        (
            (
                f"size jobs/s, {args.concurrency} clients, 1 request: "
                f"service ({args.service_workers} workers) vs bare ({args.bare_workers})"
            ),
            one["rate"],
            bare["rate"],
            ...,
        ),
        (f"size jobs/s, {args.concurrency} clients, 2 requests: service vs bare", two["rate"], bare["rate"], ...),
        *(
            (f"  1 request: CPU ms per job, {group}", value, None, None)
            for group, value in one["cpu_ms_per_job"].items()
        ),
        (
            f"  1 request: CPU ms per job, all; jobs/s {os.cpu_count()} cores could give at that cost",
            cpu_total,
            cpu_bound,
            None,
        ),
        (
            f"target >= {TARGET_JOBS_PER_S:g} jobs/s: {'met' if one['rate'] >= TARGET_JOBS_PER_S else 'MISSED'}",
            one["rate"],
            TARGET_JOBS_PER_S,
            ...,
        ),
    ]
    report("job_overhead", rows, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

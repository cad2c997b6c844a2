"""Reliability under load: many clients submit small jobs and check every result, for a bounded time.

    python bench/stress.py [--clients 64] [--seconds 60] [--warm-up 60] [--workers 2] [--grace 30]
                           [--job-timeout 60] [--wait 10] [--no-classifier]

The service is `python run.py --port <free> --workers <--workers>` (with its classify worker, idle
here, unless --no-classifier) in a temporary working folder, with a temporary images root holding
small images of known sizes (JPEG 64x48, 320x240, 640x480, 1000x500; PNG 200x400) and four folders
of 5 such images. After a sequential warm-up, --clients threads (each with its own requests.Session)
loop until --seconds have passed. Each round submits one job and waits for it:
  - 9 rounds in 10: a single image, at random either a size job (GET /imageapi?imagePath= or POST
    action=size) or a resize job (POST JSON with width/height from 4 boxes and fit contain/cover/stretch);
  - every 10th round: one 5-image folder, as a size or a resize batch;
then GET /result/<id>?wait=<--wait> until the job has ended, and checks the result: status finished,
and every width/height (and format) as expected. A job is given up on at the earlier of
submit + --job-timeout and the end of the run + --grace; once every thread is joined, each job given
up on is looked up once more: ended since (late) or not (lost). Every HTTP request is counted once,
as ok or as an error of its kind: the HTTP status, the exception class, or a wrong result.
Before the measured run, the same clients run for --warm-up seconds: a process's memory grows while it
first meets the load (gunicorn starts its threads as requests come, the first requests import and
cache); that growth is not a leak, and the run is measured from after it.
Its requests and jobs are counted and checked the same way, and reported apart.
It reports requests, errors by kind, lost jobs, p50/p99 submit-to-result, jobs/s, the RSS of every
process of the service cold (after the sequential warm-up), at the start of the measured run (after the
warm-up load) and at the end, with growth % from that start, processes that exited (run.py restarts
dead workers), and the ERROR/WARNING lines the service logged.
run.py is stopped with SIGINT at the end, whatever happens.
"""

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Processes, RssSampler, cpu_delta, cpu_ms_per_job, cpu_usage, log, percentile, report, service  # noqa: E402

# name -> (width, height, format). Sizes whose aspect makes every contain box below come out in whole pixels.
SINGLES = {
    "s/a.jpg": (64, 48, "JPEG"),
    "s/b.jpg": (320, 240, "JPEG"),
    "s/c.jpg": (640, 480, "JPEG"),
    "s/d.png": (200, 400, "PNG"),
    "s/e.jpg": (1000, 500, "JPEG"),
}
FOLDERS = {
    f"batch-{k}": {
        f"batch-{k}/{i}-{Path(name).name}": SINGLES[name]
        for i, name in enumerate(list(SINGLES)[k:] + list(SINGLES)[:k])
    }
    for k in range(4)
}
BOXES = [(64, 64), (100, 100), (40, 90), (200, 120)]
FITS = ["contain", "cover", "stretch"]
READY_TIMEOUT = 600
HTTP_TIMEOUT = 15  # s, beyond the wait= the request asks for


def make_images(root: Path) -> None:
    for folder in [SINGLES] + list(FOLDERS.values()):
        for name, (width, height, fmt) in folder.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            gradient = Image.linear_gradient("L").resize((width, height))
            Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)).save(
                root / name, fmt
            )


def expected(name: str, action: str, params: dict) -> dict:
    width, height, fmt = SINGLES.get(name) or next(f[name] for f in FOLDERS.values() if name in f)
    if action == "size":
        return {"width": width, "height": height, "format": fmt}
    box = (params["width"], params["height"])
    if params["fit"] == "contain":  # Pillow's thumbnail(): keep the aspect inside the box, never upscale
        probe = Image.new("L", (width, height))
        probe.thumbnail(box)
        box = probe.size
    return {"width": box[0], "height": box[1], "format": fmt}


def wrong(result: dict, want: dict) -> str | None:
    got = {key: result.get(key) for key in want}
    return None if got == want else f"wanted {want}, got {got}"


class Tally:
    """Every request and every job of one client; merged at the end."""

    def __init__(self):
        self.sent = 0
        self.outcomes = Counter()  # "ok" or an error kind; one per request sent
        self.jobs = Counter()  # correct / wrong / failed / given up
        self.errors = Counter()  # error kinds, requests' and jobs'
        self.examples: dict[str, str] = {}
        self.latency = {"single": [], "batch": []}
        self.given_up: list[tuple[str, str]] = []  # (job id, kind)
        self.submitted = 0

    def request(self, session: requests.Session, method: str, url: str, what: str, **kwargs):
        """One HTTP request, counted; the answer, or None after an exception (counted by class)."""
        self.sent += 1
        try:
            answer = session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            self.fail(f"{type(exc).__name__} on {what}", repr(exc))
            return None
        if answer.status_code in (200, 202):
            self.outcomes["ok"] += 1
        else:
            self.fail(f"HTTP {answer.status_code} on {what}", answer.text[:300])
        return answer

    def fail(self, kind: str, example: str) -> None:
        self.outcomes[kind] += 1
        self.errors[kind] += 1
        self.examples.setdefault(kind, example)

    def job_error(self, kind: str, example: str) -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, example)


def client_loop(number: int, base: str, end: float, grace: float, patience: float, wait: int, tally: Tally) -> None:
    rng = random.Random(f"stress-{number}")
    rounds = 0
    with requests.Session() as session:
        while time.monotonic() < end:
            rounds += 1
            action = rng.choice(["size", "resize"])
            params = (
                {"width": (box := rng.choice(BOXES))[0], "height": box[1], "fit": rng.choice(FITS)}
                if action == "resize"
                else {}
            )
            if rounds % 10 == 0:
                kind, folder = "batch", rng.choice(list(FOLDERS))
                names = list(FOLDERS[folder])
                sent = time.monotonic()
                answer = tally.request(
                    session,
                    "POST",
                    f"{base}/imageapi",
                    "submit batch",
                    timeout=HTTP_TIMEOUT,
                    json={"imagePath": folder, "action": action, **params},
                )
            else:
                kind, names = "single", [rng.choice(list(SINGLES))]
                sent = time.monotonic()
                if action == "size" and rng.random() < 0.5:
                    answer = tally.request(
                        session,
                        "GET",
                        f"{base}/imageapi",
                        "submit",
                        timeout=HTTP_TIMEOUT,
                        params={"imagePath": names[0]},
                    )
                elif action == "size":
                    answer = tally.request(
                        session,
                        "POST",
                        f"{base}/imageapi",
                        "submit",
                        timeout=HTTP_TIMEOUT,
                        data={"imagePath": names[0], "action": "size"},
                    )
                else:
                    answer = tally.request(
                        session,
                        "POST",
                        f"{base}/imageapi",
                        "submit",
                        timeout=HTTP_TIMEOUT,
                        json={"imagePath": names[0], "action": "resize", **params},
                    )
            if answer is None or answer.status_code != 202:
                time.sleep(0.1)  # a refused submit: do not spin
                continue
            job_id = answer.json()["jobId"]
            tally.submitted += 1
            give_up = min(sent + patience, end + grace)
            body = None
            while time.monotonic() < give_up:
                seconds = max(1, min(wait, int(give_up - time.monotonic())))
                got = tally.request(
                    session,
                    "GET",
                    f"{base}/result/{job_id}",
                    "result",
                    params={"wait": seconds},
                    timeout=seconds + HTTP_TIMEOUT,
                )
                if got is None or got.status_code not in (200, 202):
                    if got is not None and got.status_code == 404:
                        break  # the job is gone: counted below as given up (then lost)
                    time.sleep(0.2)
                    continue
                if got.status_code == 200:
                    body = got.json()
                    break
            if body is None:
                tally.jobs["given up"] += 1
                tally.given_up.append((job_id, kind))
                continue
            tally.latency[kind].append(1000 * (time.monotonic() - sent))
            if body.get("status") != "finished":
                tally.jobs["failed"] += 1
                tally.job_error(f"job failed ({kind} {action})", str(body.get("error"))[:300])
                continue
            result = body.get("result") or {}
            if kind == "single":
                problem = wrong(result, expected(names[0], action, params))
            else:
                entries = result.get("images") or []
                problem = (
                    None
                    if (result.get("total"), result.get("failed"), [e.get("image") for e in entries]) == (5, 0, names)
                    else (
                        f"total={result.get('total')} failed={result.get('failed')} "
                        f"images={[e.get('image') for e in entries]}"
                    )
                )
                for entry in entries if problem is None else []:
                    problem = problem or wrong(entry.get("result") or {}, expected(entry["image"], action, params))
            if problem:
                tally.jobs["wrong"] += 1
                tally.job_error(f"wrong result ({kind} {action})", f"{job_id} {params}: {problem}")
            else:
                tally.jobs["correct"] += 1


def queue_depths(base: str, stop: threading.Event, depths: list, interval: float = 2.0) -> None:
    """The images queue's depth from GET /health every interval seconds until stop is set."""
    with requests.Session() as session:
        while not stop.wait(interval):
            try:
                depths.append(session.get(f"{base}/health", timeout=HTTP_TIMEOUT).json()["queues"]["images"])
            except (requests.RequestException, ValueError, KeyError):
                pass  # the clients count the service's errors; this is only a gauge


def warm_up(base: str) -> None:
    with requests.Session() as session:
        for round_ in range(20):
            name = list(SINGLES)[round_ % len(SINGLES)]
            answer = session.post(
                f"{base}/imageapi", json={"imagePath": name, "action": ("size", "resize")[round_ % 2]}, timeout=30
            )
            answer.raise_for_status()
            session.get(f"{base}/result/{answer.json()['jobId']}", params={"wait": 10}, timeout=30).raise_for_status()


LOG_LINE = re.compile(r"service=(\S+).*? level=(ERROR|WARNING|CRITICAL) msg=\"(.{0,80})")


def logged_problems(logs: Path) -> Counter:
    """ERROR/WARNING/CRITICAL lines of the service's log files, by service, level and the start of the message."""
    found = Counter()
    for path in logs.glob("*.log"):
        with path.open(errors="replace") as file:
            for line in file:
                if "level=ERROR" in line or "level=WARNING" in line or "level=CRITICAL" in line:
                    match = LOG_LINE.search(line)
                    key = " ".join(match.groups()) if match else line[:120]
                    found[re.sub(r"[0-9a-f]{32}(-\d+)?", "<id>", key)] += 1
    return found


def drive(
    base: str, args, seconds: float, tallies: list[Tally], sampler: RssSampler | None = None
) -> tuple[float, list[str]]:
    """One client thread per tally, submitting for `seconds`; joined.

    (Elapsed s, the threads still alive at the deadline.)
    """
    began = time.monotonic()
    end = began + seconds
    threads = [
        threading.Thread(
            target=client_loop, name=f"client-{i}", args=(i, base, end, args.grace, args.job_timeout, args.wait, tally)
        )
        for i, tally in enumerate(tallies)
    ]
    for thread in threads:
        thread.start()
    join_deadline = end + args.grace + args.job_timeout + 2 * HTTP_TIMEOUT + 30
    last_note = time.monotonic()
    for thread in threads:
        while thread.is_alive() and time.monotonic() < join_deadline:
            thread.join(5)
            if sampler is not None and time.monotonic() - last_note >= 60:
                last_note = time.monotonic()
                done = sum(sum(t.jobs.values()) for t in tallies)
                log(
                    f"  {last_note - began:.0f} s: {done} jobs ended, {sum(t.sent for t in tallies)} requests, "
                    f"{sum(sum(t.errors.values()) for t in tallies)} errors; "
                    + ", ".join(f"{k} {v:.0f}" for k, v in sampler.samples[-1][1].items())
                )
    return time.monotonic() - began, [thread.name for thread in threads if thread.is_alive()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--seconds", type=float, default=60, help="seconds the clients submit for (default 60)")
    parser.add_argument(
        "--warm-up", type=float, default=60, help="seconds of the same load before the measured run (default 60)"
    )
    parser.add_argument("--workers", type=int, default=2, help="run.py --workers (default 2)")
    parser.add_argument(
        "--grace", type=float, default=30, help="seconds after the end a job may still end (default 30)"
    )
    parser.add_argument("--job-timeout", type=float, default=60, help="seconds a client waits for one job (default 60)")
    parser.add_argument("--wait", type=int, default=10, help="wait= of each GET /result, 1..30 (default 10)")
    parser.add_argument("--no-classifier", action="store_true", help="run the service without its classify worker")
    args = parser.parse_args(argv)
    if not (
        1 <= args.clients <= 512
        and 1 <= args.seconds <= 3600
        and args.workers >= 1
        and 0 <= args.grace <= 600
        and 1 <= args.job_timeout <= 600
        and 1 <= args.wait <= 30
        and 0 <= args.warm_up <= 3600
    ):
        parser.error("an option is out of range")

    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-stress-"))
    try:
        images = tmp / "images"
        make_images(images)
        logs = tmp / "logs"
        with service(
            tmp / "work", images, logs, args.workers, classifier=not args.no_classifier, ready_timeout=READY_TIMEOUT
        ) as running:
            base = f"http://127.0.0.1:{running.port}"
            processes = Processes(running.process.pid)
            warm_up(base)
            cold_rss = processes.rss()
            warm_tallies = [Tally() for _ in range(args.clients)]
            warm_hung = []
            if args.warm_up:
                log(
                    f"warm-up load: {args.clients} clients for {args.warm_up:g} s; RSS cold: "
                    + ", ".join(f"{k} {v:.0f} MB" for k, v in cold_rss.items())
                )
                _, warm_hung = drive(base, args, args.warm_up, warm_tallies)
            tallies = [Tally() for _ in range(args.clients)]
            with RssSampler(processes, interval=2.0) as sampler:
                start_rss = sampler.sample()
                cpu_start = cpu_usage(processes)
                depths, stop_gauge = [], threading.Event()
                gauge = threading.Thread(target=queue_depths, args=(base, stop_gauge, depths), name="queue-gauge")
                gauge.start()
                log(
                    f"{args.clients} clients for {args.seconds:g} s (+{args.grace:g} s grace); RSS at start: "
                    + ", ".join(f"{k} {v:.0f} MB" for k, v in start_rss.items())
                )
                elapsed, hung = drive(base, args, args.seconds, tallies, sampler)
                hung += warm_hung
                end_rss = sampler.sample()
                cpu = cpu_delta(cpu_start, cpu_usage(processes))
                stop_gauge.set()
                gauge.join(HTTP_TIMEOUT + 5)
            gone = sorted(processes.gone)
            # Each job a client gave up on, looked up once more: ended late, or lost.
            late, lost = Counter(), Counter()
            with requests.Session() as session:
                for tally in tallies + warm_tallies:
                    for job_id, kind in tally.given_up:
                        try:
                            answer = session.get(f"{base}/result/{job_id}", timeout=HTTP_TIMEOUT)
                            status = (
                                answer.json().get("status")
                                if answer.status_code == 200
                                else f"HTTP {answer.status_code}"
                            )
                        except (requests.RequestException, ValueError) as exc:
                            status = type(exc).__name__
                        (late if status in ("finished", "failed") else lost)[f"{kind}, {status}"] += 1
            notable = list(running.notable)
        problems = logged_problems(logs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    sent = sum(t.sent for t in tallies)
    outcomes = sum((t.outcomes for t in tallies), Counter())
    errors = sum((t.errors for t in tallies), Counter())
    jobs = sum((t.jobs for t in tallies), Counter())
    examples = {}
    for tally in tallies:
        for kind, text in tally.examples.items():
            examples.setdefault(kind, text)
    submitted = sum(t.submitted for t in tallies)
    warm = {
        "requests": sum(t.sent for t in warm_tallies),
        "errors": dict(sum((t.errors for t in warm_tallies), Counter())),
        "jobs_submitted": sum(t.submitted for t in warm_tallies),
        "jobs": dict(sum((t.jobs for t in warm_tallies), Counter())),
    }
    warm_accounted = all(
        sum(t.outcomes.values()) == t.sent and sum(t.jobs.values()) == t.submitted for t in warm_tallies
    )
    accounted = sum(outcomes.values()) == sent and sum(jobs.values()) == submitted and not hung and warm_accounted
    latency = {kind: sum((t.latency[kind] for t in tallies), []) for kind in ("single", "batch")}
    every = latency["single"] + latency["batch"]
    lost_total, late_total = sum(lost.values()), sum(late.values())
    rss_growth = {label: 100 * (end_rss[label] / start_rss[label] - 1) for label in start_rss if label in end_rss}
    restarts = [line.strip() for line in notable if "starting it again" in line]
    ended = sum(len(v) for v in latency.values()) or 1
    cpu_ms = cpu_ms_per_job(cpu, ended)
    service_labels = [k for k in cpu if k not in ("machine", "bench client", "api (master + workers)")]
    on_cpu = sum(cpu[k][0] for k in service_labels)
    waiting = sum(cpu[k][1] for k in service_labels) if all(cpu[k][1] is not None for k in service_labels) else None
    busy, idle = cpu.get("machine", (None, None))
    busy_pct = 100 * busy / (busy + idle) if busy is not None and busy + idle > 0 else None
    ours_pct = 100 * (on_cpu + cpu.get("bench client", (0, 0))[0]) / (busy + idle) if busy_pct is not None else None
    figures = {
        "clients": args.clients,
        "seconds": args.seconds,
        "elapsed_s": elapsed,
        "workers": args.workers,
        "classifier": not args.no_classifier,
        "grace_s": args.grace,
        "job_timeout_s": args.job_timeout,
        "wait": args.wait,
        "requests": sent,
        "requests_ok": outcomes["ok"],
        "errors": dict(errors),
        "error_examples": examples,
        "jobs_submitted": submitted,
        "jobs": dict(jobs),
        "jobs_lost": lost_total,
        "jobs_late": late_total,
        "lost": dict(lost),
        "late": dict(late),
        "all_accounted_for": accounted,
        "hung_threads": hung,
        "jobs_per_s": sum(len(v) for v in latency.values()) / args.seconds,
        **{f"{kind}_p{q}_ms": percentile(values, q) for kind, values in latency.items() for q in (50, 99)},
        **{f"{kind}_jobs": len(values) for kind, values in latency.items()},
        "p50_ms": percentile(every, 50),
        "p99_ms": percentile(every, 99),
        "max_ms": max(every, default=None),
        "warm_up_s": args.warm_up,
        "warm_up": warm,
        "rss_mb_cold": cold_rss,
        "rss_mb_start": start_rss,
        "rss_mb_end": end_rss,
        "rss_mb_peak": sampler.peak,
        "rss_growth_pct": rss_growth,
        "processes_gone": gone,
        "worker_restarts": restarts,
        "run_py_notable_lines": notable[:50],
        "logged_problems": dict(problems.most_common(30)),
        "loadavg_1m_at_start": load_start,
        "cpu_s": {k: v[0] for k, v in cpu.items()},
        "cpu_wait_s": {k: v[1] for k, v in cpu.items()},
        "cpu_ms_per_job": cpu_ms,
        "service_on_cpu_s": on_cpu,
        "service_waiting_for_cpu_s": waiting,
        "machine_busy_pct": busy_pct,
        "service_and_client_pct_of_machine": ours_pct,
        "images_queue_depths": depths,
        "images_queue_depth_median": percentile(depths, 50) if depths else None,
        "images_queue_depth_max": max(depths, default=None),
    }
    rows = [
        (
            f"warm-up ({args.warm_up:g} s, not measured): requests; baseline: errors",
            warm["requests"],
            sum(warm["errors"].values()),
            None,
        ),
        (
            "warm-up: jobs correct; baseline: jobs submitted",
            warm["jobs"].get("correct", 0),
            warm["jobs_submitted"],
            ...,
        ),
        (
            f"requests ({args.clients} clients, {args.seconds:g} s; all accounted for: {'yes' if accounted else 'NO'})",
            sent,
            None,
            None,
        ),
        ("requests answered 200/202", outcomes["ok"], sent, ...),
        ("errors, all kinds (requests' and jobs')", sum(errors.values()), None, None),
    ]
    rows += [(f"  error: {kind}", count, None, None) for kind, count in errors.most_common(12)]
    if len(errors) > 12:
        rows.append(
            (
                f"  error: {len(errors) - 12} more kinds (see results.jsonl)",
                sum(c for _, c in errors.most_common()[12:]),
                None,
                None,
            )
        )
    rows += [
        ("jobs submitted (202)", submitted, None, None),
        ("  jobs correct (finished, sizes as expected)", jobs["correct"], submitted, ...),
        ("  jobs failed / wrong result", jobs["failed"] + jobs["wrong"], None, None),
        (
            f"  jobs lost (not ended by give-up: submit + {args.job_timeout:g} s or end + {args.grace:g} s)",
            lost_total,
            None,
            None,
        ),
        ("  jobs that ended after their client gave up (late)", late_total, None, None),
        ("jobs/s (ended, while submitting)", figures["jobs_per_s"], None, None),
        ("submit->result p50, ms: single vs 5-image batch", figures["single_p50_ms"], figures["batch_p50_ms"], ...),
        ("submit->result p99, ms: single vs 5-image batch", figures["single_p99_ms"], figures["batch_p99_ms"], ...),
        ("submit->result p50, all jobs, ms", figures["p50_ms"], None, None),
        ("submit->result p99, all jobs, ms", figures["p99_ms"], None, None),
        ("submit->result max, all jobs, ms", figures["max_ms"], None, None),
    ]
    rows += [(f"CPU ms per job ended: {group}", value, None, None) for group, value in cpu_ms.items()]
    rows += [
        ("service processes: s waiting for a CPU vs s on one", waiting, on_cpu, ...),
        (
            f"machine CPU busy, % of {os.cpu_count()} cores (baseline: the service's + this client's share)",
            busy_pct,
            ours_pct,
            ...,
        ),
        (
            "images queue depth, every 2 s: median (baseline: max)",
            figures["images_queue_depth_median"],
            figures["images_queue_depth_max"],
            ...,
        ),
    ]
    for label in start_rss:
        if label in end_rss:
            rows.append(
                (
                    f"RSS {label}: end vs start, MB ({rss_growth[label]:+.1f}%; cold {cold_rss.get(label, 0):.0f})",
                    end_rss[label],
                    start_rss[label],
                    ...,
                )
            )
    rows += [
        ("processes that exited during the run (run.py restarts workers)", len(gone), None, None),
        ("ERROR/WARNING/CRITICAL lines the service logged", sum(problems.values()), None, None),
    ]
    report("stress", rows, figures)
    if problems:
        log(
            "logged problems, most frequent first:\n" + "\n".join(f"  {n:6d}  {k}" for k, n in problems.most_common(10))
        )
    for kind, text in list(examples.items())[:10]:
        log(f"example of {kind}: {text}")
    return 0 if accounted else 1


if __name__ == "__main__":
    sys.exit(main())

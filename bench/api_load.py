"""Enqueue requests per second: GET /imageapi?imagePath=<small JPEG> under 32 concurrent clients, vs GET /health.

    python bench/api_load.py [--clients 32] [--seconds 15] [--workers 2] [--client auto|wrk|python]

The service is `python run.py --port <free> --workers <--workers> --no-classifier` in a temporary
working folder, with one 64x48 JPEG in a temporary images root. The load generator is `wrk`
(-t 2 -c <clients> -d <seconds>, keep-alive, a Lua script counting every status) when it is on the
PATH (`apt-get install -y wrk`), else --clients Python threads, each with its own requests.Session,
sending requests back to back until the time is up. First GET /health for --seconds (the baseline:
the same gunicorn, Flask and Redis round trip, no job), then GET /imageapi?imagePath=small.jpg for
--seconds (each request enqueues one size job; the 2 workers run them meanwhile). Both after 2 s of
warm-up load, whose jobs the workers finish before the measured run starts (the queue is empty).
It reports requests/s, p50/p99 latency and the errors by status (and by exception or
socket error), then how many jobs were still queued when the load stopped and how long the workers
took to drain them. run.py is stopped with SIGINT at the end, whatever happens.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Client, Processes, cpu_delta, cpu_usage, log, percentile, report, service  # noqa: E402

IMAGE = "small.jpg"
WARMUP_S = 2
DRAIN_DEADLINE_S = 300

WRK_SCRIPT = r"""
local threads = {}
counts = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do total[tostring(status)] = (total[tostring(status)] or 0) + n end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%s": %d', status, n)) end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f, '
    .. '"max_us": %d, "statuses": {%s}, "socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
    .. '"non_2xx_3xx": %d}\n', summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout, e.status))
end
"""


def load_wrk(url: str, clients: int, seconds: float, script: Path) -> dict:
    command = ["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:g}s", "--timeout", "30s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((text for text in done.stdout.splitlines() if text.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"[:2000])
    raw = json.loads(line[len("WRKJSON ") :])
    errors = {f"HTTP {status}": n for status, n in raw["statuses"].items() if not 200 <= int(status) < 300}
    errors.update({f"socket {kind}": n for kind, n in raw["socket_errors"].items() if n})
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "statuses": raw["statuses"],
        "errors": errors,
    }


def load_python(url: str, clients: int, seconds: float) -> dict:
    import requests

    lock = threading.Lock()
    latencies, statuses, exceptions = [], Counter(), Counter()
    started = time.perf_counter()
    deadline = time.monotonic() + seconds

    def client():
        mine, counts, failures = [], Counter(), Counter()
        with requests.Session() as session:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                try:
                    answer = session.get(url, timeout=(5, 30))
                    counts[answer.status_code] += 1
                except requests.RequestException as exc:
                    failures[type(exc).__name__] += 1
                    continue
                mine.append(1000 * (time.perf_counter() - sent))
        with lock:
            latencies.extend(mine)
            statuses.update(counts)
            exceptions.update(failures)

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    elapsed = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("a client thread did not finish")
    errors = {f"HTTP {status}": n for status, n in statuses.items() if not 200 <= status < 300}
    errors.update({f"exception {name}": n for name, n in exceptions.items()})
    return {
        "requests": sum(statuses.values()) + sum(exceptions.values()),
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": sum(latencies) / len(latencies) if latencies else None,
        "max_ms": max(latencies, default=None),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": errors,
    }


def drain(client: Client) -> tuple[int, float, bool]:
    """Wait (bounded) until the workers have emptied the images queue: (jobs queued at first, seconds, emptied)."""
    started, deadline = time.perf_counter(), time.monotonic() + DRAIN_DEADLINE_S
    first = queued = client.request("GET", "/health")[1]["queues"]["images"]
    while queued and time.monotonic() < deadline:
        time.sleep(0.2)
        queued = client.request("GET", "/health")[1]["queues"]["images"]
    return first, time.perf_counter() - started, queued == 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seconds", type=float, default=15, help="seconds of load per route (default 15)")
    parser.add_argument("--workers", type=int, default=2, help="run.py --workers (default 2)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if installed (auto), or Python threads with requests.Session",
    )
    args = parser.parse_args(argv)
    if not (1 <= args.clients <= 256 and 1 <= args.seconds <= 120 and args.workers >= 1):
        parser.error("--clients must be 1..256, --seconds 1..120, --workers >= 1")
    kind = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if kind == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not on the PATH (apt-get install -y wrk), use --client python")

    load_start = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-load-"))
    try:
        images = tmp / "images"
        images.mkdir()
        Image.new("RGB", (64, 48), (120, 160, 200)).save(images / IMAGE, "JPEG", quality=90)
        script = tmp / "count.lua"
        script.write_text(WRK_SCRIPT)

        def load(url: str, seconds: float) -> dict:
            return (
                load_wrk(url, args.clients, seconds, script)
                if kind == "wrk"
                else load_python(url, args.clients, seconds)
            )

        with service(tmp / "work", images, tmp / "logs", args.workers) as running:
            base = f"http://127.0.0.1:{running.port}"
            processes = Processes(running.process.pid)
            results = {}
            for name, path in (("health", "/health"), ("enqueue", f"/imageapi?imagePath={IMAGE}")):
                log(f"{kind}: {args.clients} clients on {path}: {WARMUP_S} s warm-up, then {args.seconds:g} s")
                load(base + path, WARMUP_S)
                client = Client(running.port)
                try:
                    drain(client)  # the warm-up's jobs: every measured run starts with an empty queue
                    cpu_before, children_before = cpu_usage(processes), resource.getrusage(resource.RUSAGE_CHILDREN)
                    results[name] = load(base + path, args.seconds)
                    cpu = cpu_delta(cpu_before, cpu_usage(processes))
                    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has exited
                    generator_s = (
                        children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
                        if kind == "wrk"
                        else cpu["bench client"][0]
                    )
                    n = results[name]["requests"] or 1
                    busy, idle = cpu["machine"]
                    results[name].update(
                        {
                            "api_cpu_ms_per_request": 1000 * cpu["api (master + workers)"][0] / n,
                            "redis_cpu_ms_per_request": 1000 * cpu["redis-server"][0] / n,
                            "workers_cpu_s": sum(v[0] for k, v in cpu.items() if k.startswith("image worker")),
                            "generator_cpu_s": generator_s,
                            "machine_busy_pct": 100 * busy / (busy + idle) if busy + idle else None,
                            "service_waiting_for_cpu_s": sum(
                                v[1] or 0
                                for k, v in cpu.items()
                                if k not in ("machine", "bench client", "api (master + workers)")
                            ),
                        }
                    )
                    r = results[name]
                    r["queued_at_end"], r["drain_s"], r["drained"] = drain(client)
                    log(
                        f"  {r['requests'] / r['seconds']:.0f} requests/s, p50 {r['p50_ms']:.1f} ms, "
                        f"p99 {r['p99_ms']:.1f} ms, "
                        f"errors {r['errors'] or 'none'}; {r['queued_at_end']} jobs were queued, "
                        f"emptied in {r['drain_s']:.1f} s"
                    )
                finally:
                    client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    health, enqueue = results["health"], results["enqueue"]
    rate = {name: r["requests"] / r["seconds"] for name, r in results.items()}
    answered_2xx = {
        name: sum(n for status, n in r["statuses"].items() if 200 <= int(status) < 300) / r["seconds"]
        for name, r in results.items()
    }
    # The workers' rate while draining: the jobs left at the end, over the time they took.
    drain_rate = (
        enqueue["queued_at_end"] / enqueue["drain_s"] if enqueue["queued_at_end"] and enqueue["drained"] else None
    )
    figures = {
        "client": kind,
        "clients": args.clients,
        "seconds": args.seconds,
        "workers": args.workers,
        **{f"{name}_{key}": value for name, r in results.items() for key, value in r.items()},
        "enqueue_requests_per_s": rate["enqueue"],
        "health_requests_per_s": rate["health"],
        "enqueue_2xx_per_s": answered_2xx["enqueue"],
        "health_2xx_per_s": answered_2xx["health"],
        "workers_drain_jobs_per_s": drain_rate,
        "loadavg_1m_at_start": load_start,
    }

    def error_text(r):
        return ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"

    rows = [
        (
            f"requests/s, {args.clients} clients ({kind}): GET /imageapi (enqueue) vs GET /health",
            rate["enqueue"],
            rate["health"],
            ...,
        ),
        (
            "  of them answered 2xx (202 queued / 200), per s: enqueue vs health",
            answered_2xx["enqueue"],
            answered_2xx["health"],
            ...,
        ),
        ("latency p50, ms: enqueue vs health", enqueue["p50_ms"], health["p50_ms"], ...),
        ("latency p99, ms: enqueue vs health", enqueue["p99_ms"], health["p99_ms"], ...),
        (f"requests in {args.seconds:g} s: enqueue vs health", enqueue["requests"], health["requests"], ...),
        (
            f"errors, enqueue ({error_text(enqueue)}) vs health ({error_text(health)})",
            sum(enqueue["errors"].values()),
            sum(health["errors"].values()),
            None,
        ),
        (
            "API CPU ms per request (gunicorn master + workers): enqueue vs health",
            enqueue["api_cpu_ms_per_request"],
            health["api_cpu_ms_per_request"],
            ...,
        ),
        (
            "Redis CPU ms per request: enqueue vs health",
            enqueue["redis_cpu_ms_per_request"],
            health["redis_cpu_ms_per_request"],
            ...,
        ),
        (
            f"image workers' CPU s during the {args.seconds:g} s: enqueue vs health",
            enqueue["workers_cpu_s"],
            health["workers_cpu_s"],
            None,
        ),
        (
            f"load generator ({kind}) CPU s: enqueue vs health",
            enqueue["generator_cpu_s"],
            health["generator_cpu_s"],
            None,
        ),
        ("machine CPU busy, %: enqueue vs health run", enqueue["machine_busy_pct"], health["machine_busy_pct"], None),
        (
            "service's s waiting for a CPU: enqueue vs health run",
            enqueue["service_waiting_for_cpu_s"],
            health["service_waiting_for_cpu_s"],
            None,
        ),
        ("size jobs still queued when the enqueue load stopped", enqueue["queued_at_end"], None, None),
        (
            f"  workers ({args.workers}) emptied that queue in, s{'' if enqueue['drained'] else ' (NOT emptied)'}",
            enqueue["drain_s"],
            None,
            None,
        ),
        ("  workers' jobs/s while emptying it, vs the enqueue rate", drain_rate, rate["enqueue"], ...),
    ]
    report("api_load", rows, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

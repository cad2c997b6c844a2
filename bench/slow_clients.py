"""Slow and waiting clients: does the API keep answering while many connections hold it?

`python bench/slow_clients.py [--idle 500] [--waits 300] [--seconds 10] [--checkout PATH]`

Starts the service with run.py (2 workers, no classifier), then, from this process:
1. queues one classify job (no classifier runs, so it stays queued) for the waits to hold on;
2. opens --idle connections that each send half a request (a request line and one header, never the
   blank line that ends the headers) and then nothing;
3. opens --waits connections that each send `GET /result/<that job>?wait=30` and wait for the answer;
4. for --seconds, asks `GET /health` and submits a size job, one after the other, each on a fresh
   connection with a 5 s timeout, and records their latencies (a timeout counts as 5 s and as failed);
5. reads the RSS of the API's processes (gunicorn's master and workers) before the load and at its height.

It prints /health and submit latency p50/p99 with and without the load, how many timed out, and the
API's memory, and appends them to bench/results.jsonl. --checkout runs another checkout's run.py (a
git worktree of an older commit) to measure the same load before a change. Every connection goes to
127.0.0.1 and every loop is bounded in count and time.
"""

import argparse
import json
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, TESTDATA, Processes, link_or_copy, log, percentile, report, service  # noqa: E402

TIMEOUT = 5.0


def raw_request(port: int, text: str, timeout: float = TIMEOUT) -> tuple[int, float]:
    """(status, seconds) of one request on a fresh connection; status 0 when it failed or timed out."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(text.encode())
            answer = sock.recv(65536).decode(errors="replace")
            return int(answer.split(" ", 2)[1]), time.perf_counter() - started
    except (OSError, ValueError, IndexError):
        return 0, time.perf_counter() - started


def get(path: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def half_open(port: int, count: int) -> list[socket.socket]:
    """count connections, each holding half a request: a request line and a header, then silence."""
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            held.append(sock)
        except OSError:
            break
    return held


def waiting(port: int, job_id: str, count: int) -> list[socket.socket]:
    """count connections, each sending a whole `GET /result/<job>?wait=30` and waiting for its answer."""
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            sock.sendall(get(f"/result/{job_id}?wait=30").encode())
            held.append(sock)
        except OSError:
            break
    return held


def probe(port: int, image: str, seconds: float) -> dict:
    """/health and a size submit, alternately, for `seconds`: their latencies (ms) and failures."""
    health, submits, statuses = [], [], {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path, into in (("/health", health), (f"/imageapi?imagePath={image}", submits)):
            status, took = raw_request(port, get(path))
            into.append(1000 * took)
            statuses[status] = statuses.get(status, 0) + 1
    return {
        "health_p50_ms": percentile(health, 50),
        "health_p99_ms": percentile(health, 99),
        "submit_p50_ms": percentile(submits, 50),
        "submit_p99_ms": percentile(submits, 99),
        "probes": len(health) + len(submits),
        "failed": sum(count for status, count in statuses.items() if status not in (200, 202)),
        "statuses": statuses,
    }


def api_rss_mb(processes: Processes) -> float:
    return processes.rss().get("api (master + workers)", 0.0)


def classify_job(port: int) -> str:
    """A job that stays queued (no classify worker runs): what the waits hold on."""
    body = (
        "POST /imageapi?action=classify&imagePath=photo.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(body.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["jobId"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=500, help="half-open connections (default 500)")
    parser.add_argument("--waits", type=int, default=300, help="open wait=30 requests (default 300)")
    parser.add_argument("--seconds", type=float, default=10, help="probing time under load (default 10)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the checkout whose run.py to start")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket a connection
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        link_or_copy(TESTDATA / "castle_image.jpg", tmp / "images" / "photo.jpg")
        with service(tmp / "work", tmp / "images", tmp / "logs", 2, root=args.checkout) as running:
            port, processes = running.port, Processes(running.process.pid)
            quiet = probe(running.port, "photo.jpg", 2)
            rss_quiet = api_rss_mb(processes)
            job_id = classify_job(port)
            log(f"holding {args.idle} half-open connections and {args.waits} wait=30 requests")
            held = half_open(port, args.idle)
            held += waiting(port, job_id, args.waits)
            time.sleep(1)  # let the server take them all in
            loaded = probe(port, "photo.jpg", args.seconds)
            rss_loaded = api_rss_mb(processes)
            for sock in held:
                sock.close()
    figures = {
        "checkout": str(args.checkout),
        "idle": args.idle,
        "waits": args.waits,
        "held": len(held),
        "quiet": quiet,
        "loaded": loaded,
        "api_rss_mb_quiet": rss_quiet,
        "api_rss_mb_loaded": rss_loaded,
    }
    rows = [
        ("/health p99 ms, loaded vs quiet", loaded["health_p99_ms"], quiet["health_p99_ms"], ...),
        ("/health p50 ms, loaded vs quiet", loaded["health_p50_ms"], quiet["health_p50_ms"], ...),
        ("submit p99 ms, loaded vs quiet", loaded["submit_p99_ms"], quiet["submit_p99_ms"], ...),
        ("probes failed or timed out (5 s), loaded", loaded["failed"], loaded["probes"], ...),
        ("API RSS MB, loaded vs quiet", rss_loaded, rss_quiet, ...),
    ]
    report("slow_clients", rows, figures)


if __name__ == "__main__":
    main()

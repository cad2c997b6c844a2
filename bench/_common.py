"""Shared helpers of the benchmarks: the results table and log, free ports, the service under run.py.

Nothing here talks to the machine's own Redis (port 6379): every Redis is one run.py starts or one
started here with embedded_redis.start on a free port.
"""

import datetime
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results.jsonl"
TESTDATA = ROOT / "testdata"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # embedded_redis, for the Redis servers we start ourselves

from imagejobs import embedded_redis  # noqa: E402  (after the path is set)

# --- output -----------------------------------------------------------------------------------------


def commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dirty() -> bool | None:
    """Whether tracked files differ from HEAD (the service measured is the work tree, not the commit)."""
    try:
        return bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return None


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def ratio(value, baseline):
    if value is None or baseline in (None, 0):
        return None
    return value / baseline


def report(bench: str, rows: list[tuple], figures: dict) -> None:
    """Print ONE table (figure | value | baseline | ratio) and append one JSON line to bench/results.jsonl."""
    cells = [("figure", "value", "baseline", "ratio")] + [
        (str(name), fmt(value), fmt(baseline), fmt(ratio(value, baseline) if r is ... else r))
        for name, value, baseline, r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]

    def line(row):
        return (
            "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"
        )

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    figures = {**figures, "loadavg_1m_at_end": os.getloadavg()[0]}  # others' work on the machine shows up here
    record = {
        "bench": bench,
        "figures": figures,
        "cores": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "worktree_dirty": dirty(),
    }
    with RESULTS.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def cpu_ms(function, items, rounds: int) -> float:
    """The median over rounds of the CPU ms per item function(item) takes."""
    per_round = []
    for _ in range(rounds):
        started = time.process_time()
        for item in items:
            function(item)
        per_round.append((time.process_time() - started) * 1000 / len(items))
    return statistics.median(per_round)


def log(message: str) -> None:
    """Progress notes go to stderr, so stdout holds only the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the two nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- Redis of our own ----------------------------------------------------------------------------------


@contextmanager
def own_redis(data_dir: Path, appendonly: bool = False):
    """A private redis-server on a free 127.0.0.1 port; yields its URL (with a password)."""
    with own_redis_process(data_dir, appendonly) as (url, _process):
        yield url


@contextmanager
def own_redis_process(data_dir: Path, appendonly: bool = False):
    """own_redis, yielding (its URL, its subprocess.Popen): for a bench that counts the server's CPU too."""
    port, password = embedded_redis.free_port(), secrets.token_urlsafe(16)
    assert port != 6379
    process = embedded_redis.start(Path(data_dir), port, password, appendonly=appendonly)
    url = embedded_redis.url(port, password)
    try:
        embedded_redis.wait_until_up(url, process)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def stop_process(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# --- HTTP ------------------------------------------------------------------------------------------------


class Client:
    """A keep-alive HTTP/1.1 client on 127.0.0.1 (http.client: the least client-side overhead)."""

    def __init__(self, port: int, timeout: float = 45):
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict]:
        for attempt in range(2):  # one reconnect if the server closed the kept-alive connection
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                answer = self.conn.getresponse()
                data = answer.read()
                return answer.status, json.loads(data) if data else {}
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()


def post_form(client: Client, path: str, fields: dict) -> tuple[int, dict]:
    from urllib.parse import urlencode

    return client.request(
        "POST", path, urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    )


def wait_result(client: Client, job_id: str, wait: int = 30, deadline_s: float = 300) -> dict:
    """GET /result/<id>?wait=W repeated until the job is finished or failed (bounded by deadline_s)."""
    deadline = time.monotonic() + deadline_s
    while True:
        status, body = client.request("GET", f"/result/{job_id}?wait={wait}")
        if status == 200 and body.get("status") in ("finished", "failed"):
            return body
        if status >= 400:
            raise RuntimeError(f"GET /result/{job_id} answered {status}: {body}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not end within {deadline_s:.0f} s (last: {body.get('status')})")


# --- the service under run.py ------------------------------------------------------------------------


class Service:
    """`python run.py --port P --workers N [--no-classifier]` in a temporary working folder (so its
    embedded Redis keeps its AOF in <tmp>/data), with IMAGES_DIR and LOGS_DIR of our choosing.
    The classify worker is left out unless classifier=True."""

    NOTABLE = (
        "exited (code",
        "starting it again",
        "Traceback",
        "level=ERROR",
        "level=CRITICAL",
        "stopped unexpectedly",
    )
    MAX_NOTABLE = 500

    def __init__(
        self,
        workdir: Path,
        images_dir: Path,
        logs_dir: Path,
        workers: int,
        env: dict | None = None,
        classifier: bool = False,
        root: Path = ROOT,
    ):
        self.port = embedded_redis.free_port()
        Path(workdir).mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "IMAGES_DIR": str(images_dir), "LOGS_DIR": str(logs_dir), **(env or {})}
        environment.pop("REDIS_URL", None)  # run.py then starts its own Redis, never the machine's
        environment["PYTHONUNBUFFERED"] = "1"
        self.lines: list[str] = []
        self.notable: list[str] = []  # worker restarts, tracebacks, ERROR lines (the first MAX_NOTABLE)
        self.notable_count = 0
        command = [sys.executable, str(root / "run.py"), "--port", str(self.port), "--workers", str(workers)]
        if not classifier:
            command.append("--no-classifier")
        self.process = subprocess.Popen(
            command, cwd=workdir, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.process.stdout:  # the workers and the API log here too: keep the pipe flowing
            if any(mark in line for mark in self.NOTABLE):
                self.notable_count += 1
                if len(self.notable) < self.MAX_NOTABLE:
                    self.notable.append(line)
            if len(self.lines) < 200:
                self.lines.append(line)
            elif "ready at" in line or "Stopped" in line:
                self.lines.append(line)

    def wait_ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if "ready at" in line:
                    return line.split("ready at ")[1].split()[0]
            if self.process.poll() is not None:
                raise RuntimeError("run.py exited:\n" + "".join(self.lines[-30:]))
            time.sleep(0.05)
        raise RuntimeError(f"run.py printed no ready line within {timeout:.0f} s:\n" + "".join(self.lines[-30:]))

    def stop(self) -> None:
        """SIGINT, like Ctrl+C: run.py stops the API and workers, then its Redis."""
        stop_process(self.process, signal.SIGINT, timeout=20)


@contextmanager
def service(
    workdir: Path,
    images_dir: Path,
    logs_dir: Path,
    workers: int,
    env: dict | None = None,
    classifier: bool = False,
    ready_timeout: float = 60,
    root: Path = ROOT,
):
    running = Service(workdir, images_dir, logs_dir, workers, env, classifier=classifier, root=root)
    try:
        started = time.perf_counter()
        url = running.wait_ready(ready_timeout)
        log(
            f"run.py ready at {url} in {time.perf_counter() - started:.1f} s ({workers} workers"
            f"{' + classifier' if classifier else ''})"
        )
        yield running
    finally:
        running.stop()


# --- the service's processes and their memory --------------------------------------------------------

MB = 1024 * 1024


class Processes:
    """The processes under run.py, each with a stable label given when first seen:
    "run.py", "redis-server", "api master", "api worker 1..", "image worker 1..", "classifier".
    A process started later (run.py restarts a dead worker) gets the next number; `replaced` counts
    the labelled processes that have gone."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.labels: dict[int, str] = {}
        self.counters: dict[str, int] = {}
        self.gone: set[str] = set()

    def _kind(self, proc) -> str | None:
        try:
            command = " ".join(proc.cmdline())
        except Exception:  # it has just exited
            return None
        if proc.pid == self.root.pid:
            return "run.py"
        if "redis-server" in command:
            return "redis-server"
        if "gunicorn" in command:
            return "api master" if proc.ppid() == self.root.pid else "api worker"
        if "worker.py" in command:
            return "classifier" if command.rstrip().endswith("classify") else "image worker"
        return None  # a short-lived helper (the model's one-time conversion)

    def current(self) -> dict[str, "psutil.Process"]:
        """{label: process} of every process of the service alive now."""
        try:
            found = [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        alive = {}
        for proc in sorted(found, key=lambda p: p.pid):
            if proc.pid not in self.labels:
                kind = self._kind(proc)
                if kind is None:
                    continue
                if kind in ("api worker", "image worker"):
                    self.counters[kind] = self.counters.get(kind, 0) + 1
                    kind = f"{kind} {self.counters[kind]}"
                elif kind in self.counters:  # a second classifier: a restarted one
                    self.counters[kind] += 1
                    kind = f"{kind} {self.counters[kind]}"
                else:
                    self.counters[kind] = 1
                self.labels[proc.pid] = kind
            alive[self.labels[proc.pid]] = proc
        self.gone |= set(self.labels.values()) - set(alive)
        return alive

    def rss(self) -> dict[str, float]:
        """{label: RSS in MB} now, plus "api (master + workers)", the API's sum."""
        sizes = {}
        for label, proc in self.current().items():
            try:
                sizes[label] = proc.memory_info().rss / MB
            except psutil.Error:
                pass
        api = [v for k, v in sizes.items() if k.startswith("api ")]
        if api:
            sizes["api (master + workers)"] = sum(api)
        return sizes


def _schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of the live threads of pid, from Linux's
    /proc/<pid>/task/*/schedstat; None where that is not readable."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    on, waiting = 0, 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                fields = file.read().split()
            on, waiting = on + int(fields[0]), waiting + int(fields[1])
        except (OSError, ValueError, IndexError):  # a thread that has just ended
            pass
    return on / 1e9, waiting / 1e9


def cpu_usage(processes: "Processes | None" = None) -> dict[str, tuple[float, float | None]]:
    """{label: (CPU seconds, seconds waiting for a CPU)} so far, per process of the service (with the API
    summed as "api (master + workers)"), plus "bench client" (this process) and "machine" (every core:
    busy seconds, idle seconds). Differences of two calls give the CPU each spent in between; the
    waiting time (Linux's run-queue delay of the threads alive at the call, so a lower bound; None
    elsewhere) shows when the cores were oversubscribed."""
    usage = {}
    targets = dict(processes.current()) if processes else {}
    targets["bench client"] = psutil.Process()
    for label, proc in targets.items():
        try:
            times = proc.cpu_times()  # counts threads that have ended too, unlike the live threads' schedstat
        except psutil.Error:
            continue
        stat = _schedstat(proc.pid)
        usage[label] = (times.user + times.system, stat[1] if stat else None)
    api = [v for k, v in usage.items() if k.startswith("api ")]
    if api:
        usage["api (master + workers)"] = (
            sum(v[0] for v in api),
            None if any(v[1] is None for v in api) else sum(v[1] for v in api),
        )
    machine = psutil.cpu_times()
    usage["machine"] = (
        sum(machine) - machine.idle - getattr(machine, "iowait", 0),
        machine.idle + getattr(machine, "iowait", 0),
    )
    return usage


def cpu_delta(before: dict, after: dict) -> dict[str, tuple[float, float | None]]:
    """after - before, for the labels in both (a process restarted in between is left out)."""
    return {
        label: (
            after[label][0] - before[label][0],
            None if after[label][1] is None or before[label][1] is None else after[label][1] - before[label][1],
        )
        for label in after
        if label in before and after[label][0] >= before[label][0]
    }


def cpu_ms_per_job(cpu: dict, jobs: int) -> dict[str, float]:
    """CPU ms per job of each kind of process (the image workers summed), from a cpu_delta over `jobs` jobs."""
    groups = {
        "image workers (summed)": [k for k in cpu if k.startswith("image worker")],
        "api (master + workers)": ["api (master + workers)"],
        "redis-server": ["redis-server"],
        "classifier": [k for k in cpu if k.startswith("classifier")],
        "bench client": ["bench client"],
    }
    return {group: 1000 * sum(cpu[k][0] for k in labels if k in cpu) / max(jobs, 1) for group, labels in groups.items()}


class RssSampler:
    """A thread that records Processes.rss() every `interval` seconds: the peak of each label, and the
    samples themselves (at most max_samples, then every other one is dropped)."""

    def __init__(self, processes: Processes, interval: float = 0.5, max_samples: int = 4000):
        self.processes, self.interval, self.max_samples = processes, interval, max_samples
        self.peak: dict[str, float] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, float]:
        sizes = self.processes.rss()
        with self._lock:
            for label, value in sizes.items():
                self.peak[label] = max(value, self.peak.get(label, 0.0))
            self.samples.append((time.monotonic(), sizes))
            if len(self.samples) > self.max_samples:
                self.samples = self.samples[::2]
        return sizes

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:  # never let sampling end the run; note it
                log(f"RSS sample skipped: {exc!r}")

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def link_or_copy(source: Path, dest: Path) -> None:
    if dest.exists():
        return
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def parse_time(stamp: str | None) -> float | None:
    """An answer's ISO time (enqueuedAt, startedAt, endedAt) as a Unix timestamp, or None."""
    if not stamp:
        return None
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def record_stages(stages: dict, answer: dict, wall: float, started: float, posted: float, done: float) -> None:
    """Split one round's time into POST answered / queued / ran / after (ms), from the job's own times.

    wall is time.time() at the round's start; started, posted and done are perf_counter() readings."""
    enqueued, began, ended = (parse_time(answer.get(k)) for k in ("enqueuedAt", "startedAt", "endedAt"))
    stages["post"].append(1000 * (posted - started))
    if enqueued and began and ended:
        stages["queued"].append(1000 * (began - enqueued))
        stages["ran"].append(1000 * (ended - began))
        stages["after"].append(1000 * (wall + done - started - ended))


def chunk_times(logs_dir, batch_id: str, service: str = "worker") -> list[float]:
    """The in-worker time of each chunk of a batch, in seconds, from the log lines of `service`'s processes."""
    pattern = re.compile(rf"chunk \d+ of batch {batch_id}: \d+ images, \d+ failed, in ([\d.]+) ms")
    found = []
    for path in Path(logs_dir).glob(f"{service}-*.log"):
        found += [float(m.group(1)) / 1000 for m in pattern.finditer(path.read_text(errors="replace"))]
    return found


def tree_cpu(*pids: int) -> tuple[float, float | None]:
    """(CPU seconds, seconds waiting for a CPU) so far of the processes `pids` and all their live descendants,
    each counted once. The CPU is user + system of each (every thread), plus psutil's children_user and
    children_system: what their descendants that have ended (and were reaped) used, so a process that exits in
    between still counts. The waiting time is Linux's run-queue delay of the live threads (a lower bound; None
    where /proc does not tell). A difference of two calls is the CPU the tree spent in between."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root] + root.children(recursive=True):
                found.setdefault(proc.pid, proc)
        except psutil.Error:  # it has gone
            continue
    cpu, waiting = 0.0, 0.0
    for proc in found.values():
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        cpu += times.user + times.system + getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
        stat = _schedstat(proc.pid)
        waiting = None if stat is None or waiting is None else waiting + stat[1]
    return cpu, waiting


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, idle seconds) of every core so far, as cpu_usage's "machine"."""
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0)
    return sum(machine) - idle, idle

"""The service beside its peers thumbor 7.8 and Celery 5, and the hardware floor, over sources x boxes x formats.

    python bench/peers.py [--images 40] [--rounds 3] [--clients 8] [--sources jpeg,jpeg12,png,webp]
                          [--boxes 100,256,512,1024] [--formats jpeg,webp,avif]
                          [--thumbor-venv DIR] [--celery-venv DIR]

thumbor is the Python thumbnail server people pick instead of the service, Celery the Python job queue. The
matrix: every source kind x box x output format is a cell (4 x 4 x 3 = 48 with the defaults; about 40 minutes on
2 cores). The sources are bench/engine.py's make_sources, made once from bench/corpus.py's first --images photos
and cached under ~/.cache/imageapi-bench/engine-sources/<kind>/: `jpeg` the corpus's 1920x1280 photos as JPEGs
(2.5 MP, quality 90), `jpeg12` the same scaled to 4032x3024 with LANCZOS plus a little gaussian grain (12 MP, a
phone photo), quality 90, `png` and `webp` (quality 90) the 2.5 MP photos re-encoded. They are hard links in a
temporary images root, a folder per kind. Every request of a cell asks for the same thing: a thumbnail in the
cell's format that fits in box x box.

The servers are up for the whole run, in this process's session (so Linux's autogroup scheduling treats them
alike when the machine is busy), and each is warmed up once per format before the first cell:
- thumbor 7.8.0, from a virtual environment of its own (--thumbor-venv, default
  ~/.cache/imageapi-bench/thumbor-venv, made once with `python -m venv` and pip; never the project's
  environment): `thumbor --ip 127.0.0.1 --port <free> --conf F --processes <cores> --log-level warning`, F
  written here: the file loader rooted at the images root, no storage, no result storage, unsafe URLs allowed.
  It saves at its QUALITY, 80 (JPEG with optimize; WebP and AVIF too).
- the service: `python run.py --workers 2 --no-classifier` (_common.service), its IMAGES_DIR the images root.
  It saves JPEG at quality 85 and WebP at 80 with method 0; it cannot write AVIF yet (Image.FORMATS).
- Celery: `celery[redis]>=5.4,<6` and Pillow in a virtual environment of its own (--celery-venv, default
  ~/.cache/imageapi-bench/celery-venv, made like thumbor's). Its broker and result backend: a private
  redis-server on a free port in the temporary folder (_common.own_redis_process; never 6379). Its tasks module,
  written here (CELERY_TASKS): one task, thumbnail(src, dest, box, fmt): Image.open, img.thumbnail((box, box)),
  save (JPEG quality 85, WebP quality 80 method 0, AVIF Pillow's defaults), the plain code a Celery user would
  write. Its worker: `celery -A tasks worker --pool prefork --concurrency <cores> --loglevel warning`. The client
  that submits is a driver written here (CELERY_DRIVER) and run by that venv's python, since the project's
  environment has no Celery: it takes one phase at a time on stdin, times it itself and answers JSON on stdout.
- the floor: a pool of one process per core doing, file to file, bench/engine.py's `thumbor` (thumbor's PIL
  engine's steps: open, draft to the target, LANCZOS resize, save at thumbor's qualities; nothing else).

Then, cell by cell, --rounds times, in this order (leaving out what a server cannot do: see below):

1. thumbor: GET /unsafe/fit-in/<box>x<box>/filters:format(<fmt>)/<kind>/<file> for each image once (without the
   filter when the source is in that format already), from --clients threads on keep-alive connections; every
   answer must be 200, image/<fmt>, an image of that format whose longer side is the box's (or the source's, if
   smaller: nothing is upscaled);
2. service, batch: POST /imageapi imagePath=<kind> width=<box> height=<box> format=<fmt> (resize, fit
   contain), then GET /result/<id>?wait=30 until it ends; it must finish with total = images, failed = 0,
   nothing reused, each entry a thumbnail of that format and size;
3. service, single: POST /imageapi imagePath=<kind>/<file> width height format wait=10 for each image once,
   from --clients threads; each must be a finished thumbnail of that format and size;
4. celery group: a group of one thumbnail task per image, .apply_async(), then .get(timeout=..., interval=0.01)
   (with Celery's default interval, 0.5 s, a group's results are looked at every half second, which on a small
   cell measures the interval, not Celery); every size must be right;
5. celery single: from --clients threads, thumbnail.delay(...).get(timeout=...) per image;
6. the floor: its processes fed chunks of the images through a queue; every file must be right.

The service's thumbnails folder (resized/ in the root) is deleted before 2 and 3, so every round does the work.
Per phase and round: images/s (the wall clock around the phase; Celery's from its driver's own timing) and CPU
ms per image: psutil's user + system of every process of the server, children included, over the images. The
server's processes: thumbor's; run.py, the API, the workers and run.py's Redis; Celery's worker and its pool,
its private Redis AND the driver, since Celery's client does real work (serialising, publishing, waiting on
results); the floor's. The bench's own client threads (phases 1 and 3) are not counted.

A cell a server cannot do says "n/a", with the reason in the table; nothing is faked. That is the service's AVIF
until Image.FORMATS has avif, any format thumbor answers in another type (its PIL engine falls back to the
source's format when its Pillow has no encoder: asked once per format before the cells), and any format Celery's
or this environment's Pillow cannot save.

How to read it: this machine is shared and noisy, so a cell gives each phase's BEST round for images/s and its
MEDIAN round for CPU ms per image. The CPU figure moves far less than the wall-clock one when neighbours are busy
(though not zero: shared caches slow every process a little), so compare CPU first. "rest" is the CPU that
processes other than ours took meanwhile, as a share of all cores (the cell's median phase): when it is well
above 0, images/s says as much about when a phase ran as about the server. Phases 1, 3 and 5 share the cores
with their clients; phase 2's client is one request and a wait. Each cell has three rows:
- images/s in the order thumbor / batch / single / celery group / celery single / floor, with the ratios service
  / peer (> 1: the service is faster): batch/thumbor, single/thumbor, batch/celery group, single/celery single;
- CPU ms per image in the same order, with the ratios peer / service (> 1: the service is cheaper):
  thumbor/batch, celery group/batch, celery single/single;
- the quality: the mean PSNR (dB, RGB) of thumbor's, the service's, Celery's and the floor's thumbnails of
  QUALITY_IMAGES images (spread over the folder) against a reference made from the same source by a full decode
  and ONE resize to the thumbnail's size with LANCZOS, with the service's minus each other's (> 0: the service's
  are closer). The servers save at different qualities (above): each is scored with its own settings.
stderr has a line per cell and round, and a summary of each cell as it ends. One table goes to stdout, one JSON
line to bench/results.jsonl: every cell's figures and runs, and the jpeg -> 100 jpeg cell's figures under the
names this bench used when it had that one cell (plot.py draws them).
Everything is on 127.0.0.1; every loop has a count and a deadline, and the whole run a backstop (SIGALRM: it
prints every thread's stack and stops); thumbor, Celery's worker, driver and Redis, run.py and the floor's
processes are stopped at the end, on errors, on Ctrl+C and on SIGTERM.
"""

import argparse
import contextlib
import faulthandler
import functools
import http.client
import io
import itertools
import json
import math
import multiprocessing
import os
import queue
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import numpy as np
import psutil
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import engine  # noqa: E402  (the sources, thumbor's steps, fit-in sizes, Pillow's format names)
from _common import (  # noqa: E402
    Client,
    Processes,
    cpu_delta,
    cpu_usage,
    fmt,
    link_or_copy,
    log,
    machine_cpu,
    own_redis_process,
    post_form,
    report,
    service,
    tree_cpu,
    wait_result,
)

from imagejobs.embedded_redis import free_port  # noqa: E402  (_common put the repository on the path)

THUMBOR_VERSION = "7.8.0"
CELERY_REQUIREMENT = "celery[redis]>=5.4,<6"
CACHE = Path.home() / ".cache" / "imageapi-bench"
THUMBOR_VENV = CACHE / "thumbor-venv"
CELERY_VENV = CACHE / "celery-venv"
KINDS = ("jpeg", "jpeg12", "png", "webp")  # engine.make_sources's kinds
SOURCE_FORMAT = {"jpeg": "jpeg", "jpeg12": "jpeg", "png": "png", "webp": "webp"}  # the format of each kind's files
BOXES = (100, 256, 512, 1024)
FORMATS = ("jpeg", "webp", "avif")
MIME = {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
DEFAULT_IMAGES = 40
SERVICE_WORKERS = 2
QUALITY_IMAGES = 8  # per cell
QUALITY_DEADLINE = 300  # seconds one cell's quality check may take
REQUEST_TIMEOUT = 30.0
PHASES = ("thumbor", "batch", "single", "celery group", "celery single", "floor")
SERVER_OF = {
    "thumbor": "thumbor",
    "batch": "service",
    "single": "service",
    "celery group": "celery",
    "celery single": "celery",
    "floor": "floor",
}
SERVERS = ("thumbor", "service", "celery", "floor")  # the quality row's order
# (name, phase, baseline phase): images/s as phase / baseline, so > 1 means the service is faster
SPEED_RATIOS = (
    ("batch/thumbor", "batch", "thumbor"),
    ("single/thumbor", "single", "thumbor"),
    ("batch/celery group", "batch", "celery group"),
    ("single/celery single", "single", "celery single"),
)
# CPU as baseline / phase, so > 1 means the service is cheaper
CPU_RATIOS = (
    ("thumbor/batch", "batch", "thumbor"),
    ("celery group/batch", "batch", "celery group"),
    ("celery single/single", "single", "celery single"),
)
HEADLINE = ("jpeg", 100, "jpeg")  # the one cell this bench measured before: plot.py draws it


class Cell(NamedTuple):
    kind: str  # a source kind: its images are in the images root's folder of that name
    box: int
    fmt: str

    def __str__(self) -> str:
        return f"{self.kind} -> {self.box} {self.fmt}"

    @property
    def key(self) -> str:
        return f"{self.kind}_{self.box}_{self.fmt}"


# --- Celery's side: the tasks module and the driver, written into the temporary folder -------------------

CELERY_TASKS = '''"""The Celery peer's one task, the plain code a Celery user would write (bench/peers.py wrote it)."""

import os

from celery import Celery
from PIL import Image

app = Celery("tasks", broker=os.environ["BENCH_CELERY_URL"], backend=os.environ["BENCH_CELERY_URL"])
app.conf.broker_connection_retry_on_startup = True
SAVE = {"jpeg": ("JPEG", {"quality": 85}), "webp": ("WEBP", {"quality": 80, "method": 0}), "avif": ("AVIF", {})}


@app.task
def thumbnail(src, dest, box, fmt):
    with Image.open(src) as img:
        img.thumbnail((box, box))
        name, options = SAVE[fmt]
        img.save(dest, name, **options)
        return img.size
'''

CELERY_DRIVER = '''"""Submits bench/peers.py's Celery phases and times them, in Celery's venv (bench/peers.py wrote it).

First line out: {"formats": what this Pillow can save, "versions"}. Then one JSON command a line in
({"mode": "group" or "single", "tasks": [[src, dest], ...], "box", "fmt", "clients", "timeout"}), one JSON line out:
{"seconds", "sizes"} or {"error"}."""

import json
import sys
import threading
import time

import celery
import PIL
from celery import group
from PIL import Image

from tasks import thumbnail

# How often a group's .get() looks at the results that came in (Celery's default, 0.5 s, would round a small
# cell's time up to half seconds: 4 images took 0.52 s with it, 0.06 s with 0.01).
GROUP_INTERVAL = 0.01


def as_group(command):
    tasks = group(thumbnail.s(src, dest, command["box"], command["fmt"]) for src, dest in command["tasks"])
    return tasks.apply_async().get(timeout=command["timeout"], interval=GROUP_INTERVAL)


def one_by_one(command):
    tasks, sizes, errors, lock, position = command["tasks"], [None] * len(command["tasks"]), [], threading.Lock(), [0]
    stop_at = time.monotonic() + command["timeout"]

    def run():
        while not errors:
            with lock:
                index = position[0]
                if index >= len(tasks):
                    return
                position[0] += 1
            try:
                left = max(1.0, stop_at - time.monotonic())
                sizes[index] = thumbnail.delay(*tasks[index], command["box"], command["fmt"]).get(timeout=left)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, daemon=True) for _ in range(min(command["clients"], len(tasks)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, stop_at - time.monotonic()) + 5)
    if errors:
        raise RuntimeError(f"{len(errors)} tasks failed, the first with {errors[0]}")
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"{position[0]} of {len(tasks)} tasks were sent within {command['timeout']} s")
    return sizes


def main():
    Image.init()
    formats = sorted(name.lower() for name in Image.SAVE)
    print(json.dumps({"formats": formats, "versions": {"celery": celery.__version__, "pillow": PIL.__version__}}))
    for line in sys.stdin:
        command = json.loads(line)
        started = time.perf_counter()
        try:
            sizes = {"group": as_group, "single": one_by_one}[command["mode"]](command)
            answer = {"seconds": time.perf_counter() - started, "sizes": sizes}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


main()
'''


# --- the floor ------------------------------------------------------------------------------------------


def floor_thumbnail(task: tuple[str, str, int, str]) -> None:
    """The floor's work for one image, file to file: thumbor's PIL engine's steps (bench/engine.py), nothing else."""
    source, dest, box, output_format = task
    engine.thumbor(Path(source), Path(dest), box, output_format)


def _floor_worker(tasks, done) -> None:
    """A floor process: thumbnails each chunk of tasks it gets, answers how many (or the error), until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C is the bench's to handle: it stops this process
    while (chunk := tasks.get()) is not None:
        try:
            for task in chunk:
                floor_thumbnail(task)
            done.put(len(chunk))
        except Exception as exc:
            done.put(f"{type(exc).__name__}: {exc}")


class FloorPool:
    """One process per core doing floor_thumbnail, fed chunks through a queue. Not multiprocessing.Pool: its
    terminate() waits without a limit on a lock that a worker which died while idle holds for ever. These
    processes are forked at once, before the bench has threads; stop() ends them by pid within seconds."""

    def __init__(self, processes: int):
        context = multiprocessing.get_context("fork")
        self.tasks, self.done = context.Queue(), context.Queue()
        self.workers = [
            context.Process(target=_floor_worker, args=(self.tasks, self.done), daemon=True) for _ in range(processes)
        ]
        for worker in self.workers:
            worker.start()

    def pids(self) -> list[int]:
        return [worker.pid for worker in self.workers if worker.is_alive()]

    def map(self, tasks: list[tuple], chunk: int, deadline_s: float) -> int:
        """Does every task; answers how many were done."""
        chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
        for part in chunks:
            self.tasks.put(part)
        made, stop_at = 0, time.monotonic() + deadline_s
        for _ in chunks:
            while True:
                if len(self.pids()) < len(self.workers):
                    raise RuntimeError("a floor process died")
                if time.monotonic() > stop_at:
                    raise TimeoutError(f"the floor did not finish {len(tasks)} images within {deadline_s:.0f} s")
                try:
                    answer = self.done.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            if isinstance(answer, str):
                raise RuntimeError(f"a floor process failed: {answer}")
            made += answer
        return made

    def stop(self) -> None:
        for worker in self.workers:
            if worker.is_alive():
                worker.terminate()
        for worker in self.workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join(5)
        for channel in (self.tasks, self.done):
            channel.cancel_join_thread()  # what is left in them is of no use: exit without flushing it
            channel.close()


# --- the peers, each in a virtual environment of its own ------------------------------------------------


def output_of(command: list) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def thumbor_installed(venv: Path) -> bool:
    return f"v{THUMBOR_VERSION}" in output_of([venv / "bin" / "thumbor", "--version"])


def celery_installed(venv: Path) -> bool:
    found = output_of([venv / "bin" / "python", "-c", "import celery, PIL; print(celery.__version__)"])
    version = tuple(int(part) for part in found.split(".")[:2] if part.isdigit())
    return (5, 4) <= version < (6,)


def ensure_venv(venv: Path, packages: list[str], installed: Callable[[Path], bool]) -> Path:
    """venv, with packages pip-installed into it first unless installed(venv) says they are: a virtual
    environment of the bench's own, made once with `python -m venv`, never the project's environment."""
    venv = venv.expanduser()
    if installed(venv):
        return venv
    if not (venv / "bin" / "python").exists():
        log(f"making a virtual environment in {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    log(f"pip install {' '.join(packages)} into {venv} (once)")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", *packages], check=True, timeout=900)
    if not installed(venv):
        raise RuntimeError(f"{' '.join(packages)} still not usable in {venv} after pip install")
    return venv


def process_tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [root.pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.Error:
        return []


def stop_tree(pids: list[int]) -> None:
    """SIGTERM to each process, by pid; whatever is left after 10 s gets SIGKILL."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


class Server:
    """A server run as `command` in workdir, its output in workdir/<name>.log. It stays in this process's
    session, as run.py and the floor do: Linux's autogroup scheduling gives each session one share of a busy
    machine, and a server in a session of its own would get a share more than the others under load.
    stop() ends it, every process by its pid (a Ctrl+C in the terminal reaches it too)."""

    def __init__(self, name: str, command: list, workdir: Path, env: dict | None = None):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def stop(self) -> None:
        stop_tree(self.pids())
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass


class Thumbor(Server):
    """`thumbor --port P --conf F --processes N` on 127.0.0.1 serving the files under root."""

    def __init__(self, venv: Path, root: Path, workdir: Path, processes: int):
        self.port, self.processes = free_port(), processes
        conf = workdir / "thumbor.conf"
        conf.write_text(
            "LOADER = 'thumbor.loaders.file_loader'\n"
            f"FILE_LOADER_ROOT_PATH = {str(root)!r}\n"
            "STORAGE = 'thumbor.storages.no_storage'\n"
            "RESULT_STORAGE = None\n"
            "ALLOW_UNSAFE_URL = True\n"
            "MAX_WAIT_SECONDS_BEFORE_SERVER_SHUTDOWN = 0\n"
            "MAX_WAIT_SECONDS_BEFORE_IO_SHUTDOWN = 0\n"
        )
        command = [venv / "bin" / "thumbor", "--ip", "127.0.0.1", "--port", str(self.port), "--conf", str(conf)]
        # --log-level warning (its default, said aloud): tornado's line per request is at INFO.
        super().__init__("thumbor", command + ["--processes", str(processes), "--log-level", "warning"], workdir)

    def wait_ready(self, timeout: float = 90) -> None:
        """Until /healthcheck answers 200 and every process (parent + one per core) is up."""
        deadline = time.monotonic() + timeout
        getter = Getter(self.port)
        try:
            while time.monotonic() < deadline:
                self.check_running()
                try:
                    status, _, _ = getter.fetch("/healthcheck")
                    if status == 200 and len(self.pids()) >= self.processes + (self.processes > 1):
                        return
                except OSError:
                    pass
                time.sleep(0.2)
        finally:
            getter.close()
        raise RuntimeError(f"thumbor did not answer /healthcheck within {timeout:.0f} s:\n{self.log_tail()}")


def celery_env(workdir: Path, url: str) -> dict:
    """The environment of Celery's processes: the private Redis's URL, the tasks module on the path, and no
    CELERY_* variable of the machine's that could point them anywhere else."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    return {**environment, "BENCH_CELERY_URL": url, "PYTHONPATH": str(workdir), "PYTHONUNBUFFERED": "1"}


class CeleryWorker(Server):
    """`celery -A tasks worker --pool prefork --concurrency N --loglevel warning` in workdir (the tasks module's)."""

    def __init__(self, venv: Path, workdir: Path, url: str, concurrency: int):
        self.concurrency = concurrency
        command = [venv / "bin" / "celery", "-A", "tasks", "worker", "--pool", "prefork"]
        command += ["--concurrency", str(concurrency), "--loglevel", "warning"]
        super().__init__("celery-worker", command, workdir, celery_env(workdir, url))

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker and its pool's processes are up (the warm-up's tasks then wait in the queue)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            if len(self.pids()) >= 1 + self.concurrency:
                return
            time.sleep(0.2)
        raise RuntimeError(f"Celery's worker did not start its pool within {timeout:.0f} s:\n{self.log_tail()}")


class CeleryClient:
    """CELERY_DRIVER run by Celery's venv's python in workdir: run() hands it one phase and reads its answer."""

    def __init__(self, venv: Path, workdir: Path, url: str):
        self.log_path = workdir / "celery-client.log"
        with self.log_path.open("wb") as errors:
            self.process = subprocess.Popen(
                [venv / "bin" / "python", "-u", "driver.py"],
                cwd=workdir,
                env=celery_env(workdir, url),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        hello = self.answer(60)
        self.formats, self.versions = set(hello["formats"]), hello["versions"]

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def answer(self, timeout: float) -> dict:
        """The driver's next line, within timeout seconds."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"Celery's client did not answer within {timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Celery's client exited with {self.process.poll()}:\n{tail}")
        return json.loads(line)

    def run(self, command: dict, timeout: float) -> dict:
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        answer = self.answer(timeout)
        if "error" in answer:
            raise RuntimeError(f"Celery's {command['mode']} phase failed: {answer['error']}")
        return answer

    def stop(self) -> None:
        """End of input: the driver exits; SIGTERM, then SIGKILL, if it has not within 5 s."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            stop_tree(self.pids())


def write_celery_files(workdir: Path) -> Path:
    workdir.mkdir(parents=True)
    (workdir / "tasks.py").write_text(CELERY_TASKS)
    (workdir / "driver.py").write_text(CELERY_DRIVER)
    return workdir


# --- clients and checks ---------------------------------------------------------------------------------


class Getter:
    """GET on one keep-alive connection to 127.0.0.1:port, reconnecting once if the server closed it."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def fetch(self, path: str) -> tuple[int, str | None, bytes]:
        """(status, Content-Type, body)."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
            try:
                self.conn.request("GET", path)
                answer = self.conn.getresponse()
                return answer.status, answer.getheader("Content-Type"), answer.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def check_image(data: bytes | Path, output_format: str, long_side: int, what: str) -> None:
    """Raises unless data (bytes or a file) is an image of output_format whose longer side is long_side (reads
    its header only: cheap)."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        if image.format != engine.PILLOW[output_format] or max(image.size) != long_side:
            raise RuntimeError(f"{what} is {image.format} {image.size}, not {output_format} with a side of {long_side}")


def thumbor_path(cell: Cell, name: str) -> str:
    """fit-in to the box, with filters:format(fmt) unless the source is in that format already (thumbor keeps a
    source's format by default)."""
    convert = "" if SOURCE_FORMAT[cell.kind] == cell.fmt else f"filters:format({cell.fmt})/"
    return f"/unsafe/fit-in/{cell.box}x{cell.box}/{convert}{quote(cell.kind)}/{quote(name)}"


def thumbor_getter(port: int, cell: Cell, long_side: int):
    """(get(name) -> the thumbnail's bytes, close): one keep-alive connection; raises unless the answer is a
    thumbnail of cell.fmt whose longer side is long_side."""
    getter = Getter(port)

    def get(name: str) -> bytes:
        status, kind, body = getter.fetch(thumbor_path(cell, name))
        if status != 200 or kind != MIME[cell.fmt]:
            raise RuntimeError(f"thumbor answered {cell} of {name} with {status} {kind}: {body[:80]!r}")
        check_image(body, cell.fmt, long_side, f"thumbor's thumbnail of {name}")
        return body

    return get, getter.close


def check_service_thumbnail(name: str, answer: dict, cell: Cell, long_side: int) -> dict:
    result = answer.get("result") or {}
    if (
        answer.get("status") != "finished"
        or result.get("format") != engine.PILLOW[cell.fmt]
        or max(result.get("width", 0), result.get("height", 0)) != long_side
    ):
        raise RuntimeError(f"the service's job for {cell} of {name} ended with {answer}")
    return result


def service_single(port: int, cell: Cell, long_side: int):
    """(make(name) -> result, close): POST one image with wait=10 (and GET /result if it has not ended by then)."""
    client = Client(port, timeout=REQUEST_TIMEOUT)

    def make(name: str) -> dict:
        fields = {"imagePath": f"{cell.kind}/{name}", "width": cell.box, "height": cell.box, "format": cell.fmt}
        status, answer = post_form(client, "/imageapi", {**fields, "wait": 10})
        if status == 202:
            answer = wait_result(client, answer["jobId"], wait=10, deadline_s=60)
        elif status != 200:
            raise RuntimeError(f"POST /imageapi {name} answered {status}: {answer}")
        return check_service_thumbnail(name, answer, cell, long_side)

    return make, client.close


def from_threads(names: list[str], clients: int, make_worker, deadline_s: float) -> None:
    """Each name once, handed out in order to `clients` threads, each with its own make_worker() -> (do, close).
    Raises the first error any thread met, or TimeoutError past deadline_s."""
    lock = threading.Lock()
    position = [0]
    errors: list[BaseException] = []
    stop_at = time.monotonic() + deadline_s

    def run():
        try:
            do, close = make_worker()
            try:
                while not errors and time.monotonic() < stop_at:
                    with lock:
                        if position[0] >= len(names):
                            return
                        name = names[position[0]]
                        position[0] += 1
                    do(name)
            finally:
                close()
        except Exception as exc:  # the others stop at their next image; reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(min(clients, len(names)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, stop_at - time.monotonic()) + REQUEST_TIMEOUT + 5)
    if errors:
        raise RuntimeError(f"{len(errors)} client threads failed, the first with: {errors[0]!r}")
    if any(thread.is_alive() for thread in threads) or position[0] < len(names):
        raise TimeoutError(f"{position[0]} of {len(names)} images were sent within {deadline_s:.0f} s")


# --- measuring -------------------------------------------------------------------------------------------


def measured(
    phase: str,
    images: int,
    pid_groups: dict[str, Callable[[], list[int]]],
    work: Callable[[], float | None],
    processes: Processes | None = None,
) -> dict:
    """Run work() and return its seconds (its own answer if it timed itself, else the wall clock around it),
    images/s, the server's CPU and waiting ms per image (every group's processes and their descendants), that
    CPU by group (or, given the service's Processes, by kind of process), this process's (the clients') CPU ms
    per image and the rest of the machine's busy share of the cores meanwhile."""
    me = psutil.Process()
    pids = {group: pids_of() for group, pids_of in pid_groups.items()}
    parts = cpu_usage(processes) if processes else None
    before, client0, machine0 = {group: tree_cpu(*p) for group, p in pids.items()}, me.cpu_times(), machine_cpu()
    started = time.perf_counter()
    own_seconds = work()
    wall = time.perf_counter() - started
    after, client1, machine1 = {group: tree_cpu(*p) for group, p in pids.items()}, me.cpu_times(), machine_cpu()
    if any(sorted(pids_of()) != sorted(pids[group]) for group, pids_of in pid_groups.items()):
        raise RuntimeError(f"{phase}: the server's processes changed during the phase (one died or was restarted)")
    by_group = {group: after[group][0] - before[group][0] for group in pids}
    waits = [None if None in (before[g][1], after[g][1]) else after[g][1] - before[g][1] for g in pids]
    server, seconds = sum(by_group.values()), own_seconds or wall
    client = (client1.user + client1.system) - (client0.user + client0.system)
    busy = machine1[0] - machine0[0]
    figures = {
        "seconds": seconds,
        "images_per_s": images / seconds,
        "cpu_ms_per_image": 1000 * server / images,
        "waiting_ms_per_image": None if None in waits else 1000 * sum(waits) / images,
        "client_cpu_ms_per_image": 1000 * client / images,
        "rest_of_machine_share": max(0.0, busy - server - client) / ((os.cpu_count() or 1) * wall),
    }
    if processes:
        figures["cpu_ms_per_image_by_process"] = service_split(cpu_delta(parts, cpu_usage(processes)), images)
    elif len(by_group) > 1:
        figures["cpu_ms_per_image_by_process"] = {group: 1000 * cpu / images for group, cpu in by_group.items()}
    return figures


def service_split(delta: dict, images: int) -> dict[str, float]:
    groups = {
        "workers": [k for k in delta if k.startswith("image worker")],
        "api": ["api (master + workers)"],
        "redis": ["redis-server"],
        "run.py": ["run.py"],
    }
    return {group: 1000 * sum(delta[k][0] for k in keys if k in delta) / images for group, keys in groups.items()}


def phase_deadline(images: int) -> float:
    """Seconds one phase of `images` images may take: generous (a 12 MP source to AVIF), still bounded."""
    return 60 + 3.0 * images


def psnr(image: Image.Image, reference: Image.Image) -> float:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def reference_of(source: Path) -> Callable[[tuple[int, int]], Image.Image]:
    """reference(size): the source decoded whole (upright, RGB) and resized ONCE to size with LANCZOS; each size
    is made once, however many thumbnails are compared with it."""
    with Image.open(source) as img:
        full = ImageOps.exif_transpose(img).convert("RGB")
    made: dict[tuple[int, int], Image.Image] = {}

    def reference(size: tuple[int, int]) -> Image.Image:
        if size not in made:
            made[size] = full.resize(size, Image.Resampling.LANCZOS)
        return made[size]

    return reference


def median_run(runs: list[dict], key: str) -> dict:
    middle = statistics.median(run[key] for run in runs)
    return min(runs, key=lambda run: abs(run[key] - middle))


def summary(runs: dict[str, list[dict]]) -> dict:
    """A cell's best images/s and median CPU ms per image for each phase, the median phase's CPU split, the
    ratios (SPEED_RATIOS, CPU_RATIOS) and the rest of the machine's median share."""
    best = {phase: max(run["images_per_s"] for run in done) for phase, done in runs.items()}
    cpu = {phase: statistics.median(run["cpu_ms_per_image"] for run in done) for phase, done in runs.items()}
    ratios = {
        f"{name} images/s": best[phase] / best[base] for name, phase, base in SPEED_RATIOS if {phase, base} <= set(best)
    }
    ratios |= {f"{name} CPU": cpu[base] / cpu[phase] for name, phase, base in CPU_RATIOS if {phase, base} <= set(cpu)}
    return {
        "best_images_per_s": best,
        "median_cpu_ms_per_image": cpu,
        "cpu_ms_per_image_by_process": {
            phase: median_run(done, "cpu_ms_per_image").get("cpu_ms_per_image_by_process")
            for phase, done in runs.items()
        },
        "ratios": ratios,
        "rest_of_machine_share_median": statistics.median(
            run["rest_of_machine_share"] for done in runs.values() for run in done
        ),
    }


# --- the bench ------------------------------------------------------------------------------------------


class Bench:
    """The servers, up for the whole run, and what each phase, cell and quality check asks of them."""

    def __init__(
        self,
        images_root: Path,
        kinds: list[str],
        out_root: Path,
        clients: int,
        pool: FloorPool,
        thumbor: Thumbor,
        celery_worker: CeleryWorker,
        celery_client: CeleryClient,
        celery_redis_pid: int,
        running,
    ):
        self.images_root, self.out_root, self.clients = images_root, out_root, clients
        self.pool, self.thumbor, self.running = pool, thumbor, running
        self.celery_worker, self.celery_client, self.celery_redis_pid = celery_worker, celery_client, celery_redis_pid
        self.processes = Processes(running.process.pid)
        self.client = Client(running.port, timeout=REQUEST_TIMEOUT)
        self.names = {kind: sorted(path.name for path in (images_root / kind).iterdir()) for kind in kinds}
        self.sizes = {kind: image_size(images_root / kind / names[0]) for kind, names in self.names.items()}
        self.unable: dict[tuple[str, str], str] = {}  # (server, format): why it cannot write that format

    def close(self) -> None:
        self.client.close()

    # which cells each server can do

    def can(self, server: str, output_format: str) -> bool:
        return (server, output_format) not in self.unable

    def phases(self, output_format: str) -> list[str]:
        return [phase for phase in PHASES if self.can(SERVER_OF[phase], output_format)]

    def probe(self, formats: list[str], kind: str) -> None:
        """Which of formats each server can write: the service by Image.FORMATS, Celery and the floor by their
        Pillow's encoders, thumbor by asking it for one thumbnail of each (it answers in the source's format
        when it has no encoder for the one asked)."""
        Image.init()
        getter = Getter(self.thumbor.port)
        try:
            for output_format in formats:
                if not engine.can("service", output_format):
                    self.unable["service", output_format] = f"the service cannot write {output_format} yet"
                if output_format not in self.celery_client.formats:
                    self.unable["celery", output_format] = f"Celery's venv's Pillow cannot save {output_format}"
                if engine.PILLOW[output_format] not in Image.SAVE:
                    self.unable["floor", output_format] = f"this environment's Pillow cannot save {output_format}"
                path = thumbor_path(Cell(kind, min(BOXES), output_format), self.names[kind][0])
                status, answered, body = getter.fetch(path)
                if status != 200:
                    raise RuntimeError(f"thumbor answered {path} with {status}: {body[:200]!r}")
                if answered != MIME[output_format]:
                    self.unable["thumbor", output_format] = f"thumbor answers {answered} to {output_format}"
        finally:
            getter.close()
        for (server, output_format), reason in self.unable.items():
            log(f"{server} cannot do {output_format}: {reason}; its cells say n/a")

    # the phases: each does one cell's images once and raises unless every thumbnail is right

    def long_side(self, cell: Cell) -> int:
        """The longer side of a thumbnail of the cell's sources: the box's, or the source's if it is smaller."""
        return max(engine.fit_in(self.sizes[cell.kind], cell.box))

    def out(self, server: str, cell: Cell, name: str) -> Path:
        """Where Celery or the floor writes its thumbnail of name in cell."""
        return self.out_root / server / f"{Path(name).stem}{engine.EXTENSIONS[cell.fmt]}"

    def deadline(self, cell: Cell) -> float:
        return phase_deadline(len(self.names[cell.kind]))

    def thumbor_phase(self, cell: Cell) -> None:
        getter = functools.partial(thumbor_getter, self.thumbor.port, cell, self.long_side(cell))
        from_threads(self.names[cell.kind], self.clients, getter, self.deadline(cell))

    def batch_phase(self, cell: Cell) -> None:
        fields = {"imagePath": cell.kind, "width": cell.box, "height": cell.box, "format": cell.fmt}
        status, answer = post_form(self.client, "/imageapi", fields)
        if status != 202:
            raise RuntimeError(f"POST /imageapi {fields} answered {status}: {answer}")
        answer = wait_result(self.client, answer["jobId"], wait=30, deadline_s=self.deadline(cell))
        result = answer.get("result") or {}
        if answer["status"] != "finished" or result.get("total") != len(self.names[cell.kind]) or result.get("failed"):
            raise RuntimeError(
                f"the batch of {cell} did not finish cleanly: {answer.get('status')}, total={result.get('total')}, "
                f"failed={result.get('failed')}, error={answer.get('error')}"
            )
        for entry in result.get("images", []):
            if entry.get("reused"):
                raise RuntimeError(f"the batch of {cell} reused {entry.get('image')} instead of making it")
            made = {"status": "finished", "result": entry.get("result")}
            check_service_thumbnail(entry.get("image"), made, cell, self.long_side(cell))

    def single_phase(self, cell: Cell) -> None:
        maker = functools.partial(service_single, self.running.port, cell, self.long_side(cell))
        from_threads(self.names[cell.kind], self.clients, maker, self.deadline(cell))

    def celery_phase(self, cell: Cell, mode: str) -> float:
        """Celery's driver does the cell in mode "group" or "single"; answers the seconds it measured."""
        names = self.names[cell.kind]
        tasks = [(str(self.images_root / cell.kind / name), str(self.out("celery", cell, name))) for name in names]
        command = {"mode": mode, "tasks": tasks, "box": cell.box, "fmt": cell.fmt, "clients": self.clients}
        answer = self.celery_client.run({**command, "timeout": self.deadline(cell)}, self.deadline(cell) + 30)
        long_side = self.long_side(cell)
        if len(answer["sizes"]) != len(names) or any(max(size) != long_side for size in answer["sizes"]):
            raise RuntimeError(f"Celery made {len(answer['sizes'])} thumbnails of {cell}: {answer['sizes'][:5]}")
        return answer["seconds"]

    def floor_phase(self, cell: Cell) -> None:
        names = self.names[cell.kind]
        outs = [self.out("floor", cell, name) for name in names]
        tasks = [(str(self.images_root / cell.kind / n), str(o), cell.box, cell.fmt) for n, o in zip(names, outs)]
        made = self.pool.map(tasks, max(1, len(tasks) // (8 * len(self.pool.workers))), self.deadline(cell))
        if made != len(tasks):
            raise RuntimeError(f"the floor made {made} of {len(tasks)} thumbnails of {cell}")
        for out in outs:
            check_image(out, cell.fmt, self.long_side(cell), f"the floor's {out.name}")

    def work(self, phase: str, cell: Cell) -> Callable[[], float | None]:
        return {
            "thumbor": lambda: self.thumbor_phase(cell),
            "batch": lambda: self.batch_phase(cell),
            "single": lambda: self.single_phase(cell),
            "celery group": lambda: self.celery_phase(cell, "group"),
            "celery single": lambda: self.celery_phase(cell, "single"),
            "floor": lambda: self.floor_phase(cell),
        }[phase]

    def pid_groups(self, phase: str) -> dict[str, Callable[[], list[int]]]:
        """The processes whose CPU a phase counts, by group."""
        server = SERVER_OF[phase]
        if server == "celery":
            return {
                "worker": self.celery_worker.pids,
                "redis": lambda: [self.celery_redis_pid],
                "client": self.celery_client.pids,
            }
        return {
            "thumbor": {"thumbor": self.thumbor.pids},
            "service": {"service": lambda: [self.running.process.pid]},
            "floor": {"floor": self.pool.pids},
        }[server]

    def measure(self, phase: str, cell: Cell) -> dict:
        is_service = SERVER_OF[phase] == "service"
        if is_service:
            shutil.rmtree(self.images_root / "resized", ignore_errors=True)  # so every round makes them anew
        processes = self.processes if is_service else None
        return measured(phase, len(self.names[cell.kind]), self.pid_groups(phase), self.work(phase, cell), processes)

    def fresh_outputs(self) -> None:
        """Empty folders for Celery's and the floor's thumbnails (a cell's quality check reads its own only)."""
        for server in ("celery", "floor"):
            shutil.rmtree(self.out_root / server, ignore_errors=True)
            (self.out_root / server).mkdir(parents=True)

    def warm_up(self, cell: Cell) -> None:
        """Every phase that can do cell, once, unmeasured."""
        self.fresh_outputs()
        for phase in self.phases(cell.fmt):
            if SERVER_OF[phase] == "service":
                shutil.rmtree(self.images_root / "resized", ignore_errors=True)
            self.work(phase, cell)()

    def run_cell(self, cell: Cell, rounds: int) -> dict:
        """rounds rounds of the cell's phases, then its quality check: {summary, psnr, runs, unavailable}."""
        self.fresh_outputs()
        phases = self.phases(cell.fmt)
        runs: dict[str, list[dict]] = {phase: [] for phase in phases}
        for number in range(rounds):
            for phase in phases:
                runs[phase].append(self.measure(phase, cell))
            done = [runs[phase][-1] for phase in phases]
            log(
                f"{cell} round {number + 1}: "
                + ", ".join(
                    f"{p} {r['images_per_s']:.0f}/s {r['cpu_ms_per_image']:.1f} ms" for p, r in zip(phases, done)
                )
                + f"; rest {100 * statistics.median(r['rest_of_machine_share'] for r in done):.0f}%"
            )
        psnrs = self.quality(cell)
        return {
            **summary(runs),
            "psnr": psnrs,
            "psnr_differences_db": psnr_differences(psnrs),
            "unavailable": {s: self.unable[s, cell.fmt] for s in SERVERS if not self.can(s, cell.fmt)},
            "runs": runs,
        }

    def quality(self, cell: Cell) -> dict:
        """Per server that can do the cell: the mean and min PSNR (dB) of its thumbnails of up to QUALITY_IMAGES
        of the cell's images vs reference_of, and their sizes. thumbor's are asked again; the service's, Celery's
        and the floor's are those of the last round (the service answers from what it remembers)."""
        servers = [server for server in SERVERS if self.can(server, cell.fmt)]
        long_side = self.long_side(cell)
        get, close_thumbor = thumbor_getter(self.thumbor.port, cell, long_side)
        make, close_service = service_single(self.running.port, cell, long_side)
        thumbnail_of = {
            "thumbor": get,
            "service": lambda name: (self.images_root / make(name)["path"]).read_bytes(),
            "celery": lambda name: self.out("celery", cell, name).read_bytes(),
            "floor": lambda name: self.out("floor", cell, name).read_bytes(),
        }
        names = self.names[cell.kind]
        picked = names[:: max(1, len(names) // QUALITY_IMAGES)][:QUALITY_IMAGES]
        scores: dict[str, list[float]] = {server: [] for server in servers}
        sizes: dict[str, set] = {server: set() for server in servers}
        stop_at = time.monotonic() + QUALITY_DEADLINE
        try:
            for name in picked:
                if time.monotonic() > stop_at:
                    raise TimeoutError(f"the quality check of {cell} took more than {QUALITY_DEADLINE} s")
                reference = reference_of(self.images_root / cell.kind / name)
                for server in servers:
                    with Image.open(io.BytesIO(thumbnail_of[server](name))) as thumb:
                        thumb = thumb.convert("RGB")
                    scores[server].append(psnr(thumb, reference(thumb.size)))
                    sizes[server].add(f"{thumb.width}x{thumb.height}")
        finally:
            close_thumbor()
            close_service()
        return {
            server: {
                "mean_psnr_db": statistics.mean(values),
                "min_psnr_db": min(values),
                "sizes": sorted(sizes[server]),
            }
            for server, values in scores.items()
        }


# --- the report -----------------------------------------------------------------------------------------


def joined(values: list) -> str:
    return " / ".join("n/a" if value is None else fmt(value) for value in values)


def cell_log(cell: Cell, figures: dict) -> str:
    """The compact summary of a cell for stderr."""
    best, cpu, psnrs = figures["best_images_per_s"], figures["median_cpu_ms_per_image"], figures["psnr"]
    parts = [
        f"{cell}: images/s {joined([best.get(p) for p in PHASES])}",
        f"CPU ms {joined([cpu.get(p) for p in PHASES])}",
        f"PSNR {joined([psnrs.get(s, {}).get('mean_psnr_db') for s in SERVERS])}",
        f"rest {100 * figures['rest_of_machine_share_median']:.0f}%",
    ]
    ratios = ", ".join(f"{name} {value:.2f}" for name, value in figures["ratios"].items())
    return "; ".join(parts + [ratios] if ratios else parts)


def psnr_differences(psnrs: dict) -> dict[str, float]:
    """The service's mean PSNR minus each other server's, in dB (> 0: the service's thumbnails are closer)."""
    if "service" not in psnrs:
        return {}
    mine = psnrs["service"]["mean_psnr_db"]
    return {f"service-{s}": mine - psnrs[s]["mean_psnr_db"] for s in SERVERS if s in psnrs and s != "service"}


def cell_rows(cell: Cell, figures: dict) -> list[tuple]:
    """Three rows: images/s, CPU ms per image (both in PHASES' order) and PSNR (SERVERS' order), each with its
    ratios (or the service's PSNR differences) in the ratio column."""
    best, cpu, psnrs, ratios = (
        figures[key] for key in ("best_images_per_s", "median_cpu_ms_per_image", "psnr", "ratios")
    )

    def of(kind: str) -> str | None:
        found = [f"{name.removesuffix(kind)} {value:.2f}" for name, value in ratios.items() if name.endswith(kind)]
        return ", ".join(found) or None

    differences = ", ".join(f"{pair} {value:+.2f}" for pair, value in psnr_differences(psnrs).items())
    return [
        (f"{cell}: images/s, best", joined([best.get(p) for p in PHASES]), None, of(" images/s")),
        (f"{cell}: CPU ms per image, median", joined([cpu.get(p) for p in PHASES]), None, of(" CPU")),
        (
            f"{cell}: PSNR dB",
            joined([psnrs.get(s, {}).get("mean_psnr_db") for s in SERVERS]),
            None,
            differences or None,
        ),
    ]


def legacy_figures(cells: dict[Cell, dict]) -> dict:
    """The jpeg -> 100 jpeg cell's figures under the names this bench used when it had one cell (plot.py's)."""
    headline = cells.get(Cell(*HEADLINE))
    if headline is None or not {"thumbor", "batch", "single", "floor"} <= set(headline["best_images_per_s"]):
        return {}
    best, cpu = headline["best_images_per_s"], headline["median_cpu_ms_per_image"]
    return {
        **{f"{phase}_best_images_per_s": best[phase] for phase in ("thumbor", "batch", "single", "floor")},
        **{f"{phase}_median_cpu_ms_per_image": cpu[phase] for phase in ("thumbor", "batch", "single", "floor")},
    }


def write_report(args, cells: dict[Cell, dict], sources: dict[str, list[Path]], run: dict) -> None:
    """One table (the run, a legend, three rows per cell, what could not be done) and one results line."""
    kinds = {
        kind: {
            "image_size": "x".join(map(str, image_size(paths[0]))),
            "mean_kb": statistics.mean(p.stat().st_size / 1e3 for p in paths),
        }
        for kind, paths in sources.items()
    }
    rest = statistics.median(figures["rest_of_machine_share_median"] for figures in cells.values())
    unavailable = sorted({f"{s} {c.fmt}: {why}" for c, f in cells.items() for s, why in f["unavailable"].items()})
    cores = os.cpu_count() or 1
    rows = [
        (
            "sources, --images each: "
            + ", ".join(f"{k} {v['image_size']} {v['mean_kb']:.0f} KB" for k, v in kinds.items()),
            len(next(iter(sources.values()))),
            None,
            None,
        ),
        ("load average 1 min: at start (value), at end (baseline)", run["load_start"], os.getloadavg()[0], None),
        (f"rest of the machine's CPU, % of {cores} cores (median cell)", 100 * rest, None, None),
        (
            f"rounds per cell; thumbor {THUMBOR_VERSION} x{cores} processes, service {SERVICE_WORKERS} workers, "
            f"celery {run['celery_versions']['celery']} prefork x{cores}, floor x{cores}, {args.clients} clients",
            args.rounds,
            None,
            None,
        ),
        ("images/s (best round) and CPU ms/image (median round), in this order", " / ".join(PHASES), None, "ratios"),
        (
            "PSNR dB vs full decode + one LANCZOS resize, in this order",
            " / ".join(SERVERS),
            None,
            "service minus each",
        ),
    ]
    for cell, figures in cells.items():
        rows += cell_rows(cell, figures)
    rows += [(f"n/a: {line}", None, None, None) for line in unavailable]
    if run["service_notable"]:
        rows.append(
            ("service: log lines of note (worker restarts, tracebacks, ERROR)", run["service_notable"], None, None)
        )
    figures = {
        "images": len(next(iter(sources.values()))),
        "image_size": kinds.get("jpeg", {}).get("image_size"),
        "sources": kinds,
        "boxes": sorted({cell.box for cell in cells}),
        "formats": sorted({cell.fmt for cell in cells}, key=FORMATS.index),
        "rounds": args.rounds,
        "clients": args.clients,
        "thumbor_version": THUMBOR_VERSION,
        "thumbor_processes": cores,
        "celery_versions": run["celery_versions"],
        "celery_concurrency": cores,
        "service_workers": SERVICE_WORKERS,
        "loadavg_1m_at_start": run["load_start"],
        "rest_of_machine_share_median": rest,
        "seconds": run["seconds"],
        "service_notable_log_lines": run["service_notable"],
        **legacy_figures(cells),
        "cells": {
            cell.key: {"source": cell.kind, "box": cell.box, "format": cell.fmt, **f} for cell, f in cells.items()
        },
    }
    report("peers", rows, figures)


# --- the run --------------------------------------------------------------------------------------------


def comma_list(text: str, allowed, convert=str, shown: str = "") -> list:
    """The distinct values of a comma list, each converted and one of allowed (refused otherwise)."""
    values = [convert(part.strip()) for part in text.split(",") if part.strip()]
    if not values or any(value not in allowed for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each must be one of {shown or ', '.join(map(str, allowed))}")
    return list(dict.fromkeys(values))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=DEFAULT_IMAGES, help=f"images per cell (default {DEFAULT_IMAGES})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the phases in each cell (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="client threads of phases 1, 3 and 5 (default 8)")
    parser.add_argument(
        "--sources", type=lambda t: comma_list(t, KINDS), default=list(KINDS), help=f"of {','.join(KINDS)} (all)"
    )
    parser.add_argument(
        "--boxes",
        type=lambda t: comma_list(t, range(1, 4097), int, "1..4096"),
        default=list(BOXES),
        help=f"boxes, 1..4096 (default {','.join(map(str, BOXES))})",
    )
    parser.add_argument(
        "--formats", type=lambda t: comma_list(t, FORMATS), default=list(FORMATS), help=f"of {','.join(FORMATS)} (all)"
    )
    parser.add_argument(
        "--thumbor-venv",
        type=Path,
        default=THUMBOR_VENV,
        help=f"with thumbor {THUMBOR_VERSION} (default {THUMBOR_VENV})",
    )
    parser.add_argument(
        "--celery-venv", type=Path, default=CELERY_VENV, help=f"with {CELERY_REQUIREMENT} (default {CELERY_VENV})"
    )
    args = parser.parse_args(argv)
    if not (1 <= args.images <= 500 and 1 <= args.rounds <= 20 and 1 <= args.clients <= 64):
        parser.error("--images must be 1..500, --rounds 1..20, --clients 1..64")
    return args


def link_sources(images_root: Path, sources: dict[str, list[Path]]) -> None:
    """Each kind's sources as hard links in the images root's folder of that name, read once so every phase
    reads files already in the page cache."""
    for kind, paths in sources.items():
        (images_root / kind).mkdir(parents=True)
        for path in paths:
            link_or_copy(path, images_root / kind / path.name)
            path.read_bytes()


def install_backstop(seconds: float) -> None:
    """Past `seconds`, print every thread's stack and stop (a TimeoutError in the main thread)."""

    def on_alarm(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise TimeoutError(f"the run took more than {seconds:.0f} s (the stacks above show where it was)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))


def log_server_tails(servers: list) -> None:
    for server in servers:
        tail = server.log_tail(1000).splitlines()
        noted = [line for line in tail if "Traceback" in line or "ERROR" in line or "CRITICAL" in line]
        if noted:
            log(f"{server.name} logged {len(noted)} lines of note, the last: " + " | ".join(noted[-3:]))


def main(argv=None) -> int:
    args = parse_args(argv)

    def stop_on_sigterm(signum, frame):
        raise SystemExit(143)  # unwinds through the finally blocks, which stop every server

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    started, load_start = time.monotonic(), os.getloadavg()[0]
    log(f"load average at start: {load_start:.2f}")
    cores = os.cpu_count() or 1
    thumbor_venv = ensure_venv(args.thumbor_venv, [f"thumbor=={THUMBOR_VERSION}"], thumbor_installed)
    celery_venv = ensure_venv(args.celery_venv, [CELERY_REQUIREMENT, "Pillow"], celery_installed)
    photos = corpus.jpegs(corpus.DEFAULT_OUT, args.images)
    log(f"sources: {args.images} of each of {', '.join(args.sources)} (made once under {engine.SOURCES_DIR})")
    sources = {kind: engine.make_sources(kind, photos) for kind in args.sources}
    cells = [Cell(*values) for values in itertools.product(args.sources, args.boxes, args.formats)]
    install_backstop(900 + len(cells) * (args.rounds * len(PHASES) * phase_deadline(args.images) + QUALITY_DEADLINE))
    results: dict[Cell, dict] = {}
    servers: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    try:
        with contextlib.ExitStack() as stack:  # stops what was started, last first
            images_root = tmp / "images"
            link_sources(images_root, sources)
            pool = FloorPool(cores)  # first: its processes are forked before this process has any threads
            stack.callback(pool.stop)
            url, redis = stack.enter_context(own_redis_process(tmp / "celery-redis"))
            celery_dir = write_celery_files(tmp / "celery")
            worker = CeleryWorker(celery_venv, celery_dir, url, cores)
            stack.callback(worker.stop)
            servers.append(worker)
            celery_client = CeleryClient(celery_venv, celery_dir, url)
            stack.callback(celery_client.stop)
            log(f"Celery {celery_client.versions['celery']} (Pillow {celery_client.versions['pillow']}): {cores} pool")
            worker.wait_ready()
            thumbor = Thumbor(thumbor_venv, images_root, tmp, cores)
            stack.callback(thumbor.stop)
            servers.append(thumbor)
            thumbor.wait_ready()
            log(f"thumbor {THUMBOR_VERSION}: {cores} processes")
            running = stack.enter_context(service(tmp / "work", images_root, tmp / "logs", SERVICE_WORKERS))
            bench = Bench(
                images_root,
                args.sources,
                tmp / "out",
                args.clients,
                pool,
                thumbor,
                worker,
                celery_client,
                redis.pid,
                running,
            )
            stack.callback(bench.close)
            bench.probe(args.formats, args.sources[0])
            for output_format in args.formats:
                bench.warm_up(Cell(args.sources[0], min(args.boxes), output_format))
            log(f"{len(cells)} cells, {args.rounds} rounds each of: {', '.join(PHASES)}; {args.images} images")
            for number, cell in enumerate(cells, 1):
                cell_started = time.monotonic()
                results[cell] = bench.run_cell(cell, args.rounds)
                log(f"[{number}/{len(cells)}, {time.monotonic() - cell_started:.0f} s] {cell_log(cell, results[cell])}")
            notable = running.notable_count
    finally:
        signal.alarm(0)
        log_server_tails(servers)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"load average at end: {os.getloadavg()[0]:.2f}; {time.monotonic() - started:.0f} s in all")
    run = {
        "load_start": load_start,
        "celery_versions": celery_client.versions,
        "service_notable": notable,
        "seconds": time.monotonic() - started,
    }
    write_report(args, results, sources, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())

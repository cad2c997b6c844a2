"""The service side by side with thumbor 7.8 (the Python thumbnail server people pick instead) and the hardware floor.

    python bench/peers.py [--images 200] [--rounds 3] [--clients 8] [--thumbor-venv DIR]

The images: the first --images JPEGs of bench/corpus.py's corpus (1920x1280, made if missing), as hard links in
a temporary images root. Every request asks for the same thing: a JPEG that fits in 100x100.

thumbor 7.8.0 runs from a virtual environment of its own, --thumbor-venv (default
~/.cache/imageapi-bench/thumbor-venv; made once with `python -m venv` and pip, then reused; never the project's
environment): `thumbor --ip 127.0.0.1 --port <free> --conf F --processes <cores>
--log-level warning`, with F written here: the file loader rooted at the images' folder, no storage, no result
storage, unsafe URLs allowed. The service: `python run.py --workers 2 --no-classifier` (_common.service), its
IMAGES_DIR the temporary root. A multiprocessing pool of one process per core stands for the floor. All three
are up for the whole run, in this process's session (so Linux's autogroup scheduling treats them alike when the
machine is busy), and warmed up first; then, --rounds times, in this order:

1. thumbor: GET /unsafe/fit-in/100x100/<file> for each image once, from --clients threads on keep-alive
   connections; every answer must be 200, image/jpeg, a JPEG whose longer side is 100;
2. service, batch: POST /imageapi imagePath=<folder> width=100 height=100 (resize, fit contain), then
   GET /result/<id>?wait=30 until it ends; it must finish with total = images, failed = 0;
3. service, single: POST /imageapi imagePath=<folder>/<file> width=100 height=100 wait=10 for each image once,
   from --clients threads; each must be a finished JPEG thumbnail within 100x100;
4. the floor: one process per core, fed chunks of the images through a queue, each image file to file: open,
   draft("RGB", the box thumbor computes), resize to that box with LANCZOS, save JPEG quality 80 (thumbor's own
   steps, nothing else).

The service's thumbnails folder (resized/ in the root) is deleted before 2 and 3, so every round does the work.
Per phase and round: wall-clock images/s, and the CPU (psutil: user + system of every process of the server,
children included: thumbor's processes; run.py, the API, the workers and Redis; the floor's processes) divided by
the images, CPU ms per image. The clients (threads of this process) are not counted.

How to read it: this machine is shared and noisy, so the table gives each phase's BEST round for images/s and
its MEDIAN round for CPU ms per image. The CPU figure moves far less than the wall-clock one when neighbours are
busy (though not zero: shared caches slow every process a little), so compare CPU first. The row "rest of the
machine" is the CPU that processes other than ours took meanwhile, as a share of all cores (median phase; per
round on stderr): when it is well above 0, a phase's images/s says as much about when it ran as about the
server, and the best rounds of two phases are comparable only if they met a similar share. Ratios: service vs
thumbor in images/s (> 1: the service is faster) and in CPU (thumbor's CPU / the service's: > 1 means the
service is cheaper); the batch vs the floor likewise (the floor is the most these cores can do with Pillow, so on
a quiet machine both are <= 1, and their distance from 1 is what the service's queue, jobs and HTTP cost).
Phases 1 and 3 include the Python clients' HTTP work on the same two cores; phase 2's client is one request and
a wait.
Quality, on 20 of the images: the PSNR of the service's, thumbor's and the floor's thumbnails against a
reference (full decode, Image.resize to the thumbnail's size with LANCZOS), all in RGB: a change to the
service's resizing that lowers quality shows as a lower mean. The JPEG qualities differ: thumbor and the floor
save at 80, the service at its own setting.
Everything is on 127.0.0.1; every loop has a count and a deadline, and the whole run a backstop (SIGALRM: it
prints every thread's stack and stops); thumbor, run.py and the floor's processes are stopped at the end, on
errors, on Ctrl+C and on SIGTERM.
"""

import argparse
import faulthandler
import http.client
import io
import math
import multiprocessing
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from _common import (  # noqa: E402
    Client,
    Processes,
    cpu_delta,
    cpu_usage,
    link_or_copy,
    log,
    machine_cpu,
    post_form,
    report,
    service,
    tree_cpu,
    wait_result,
)

from imagejobs.embedded_redis import free_port  # noqa: E402  (_common put the repository on the path)

THUMBOR_VERSION = "7.8.0"
DEFAULT_VENV = Path.home() / ".cache" / "imageapi-bench" / "thumbor-venv"
SIZE = 100  # the box every phase fits the images into
SERVICE_WORKERS = 2
FOLDER = "peers"  # the images' folder in the temporary images root
WARMUP = "warmup"  # a few of them again, for the service's warm-up batch
WARMUP_IMAGES = 16
QUALITY_IMAGES = 20
FLOOR_QUALITY = 80  # thumbor's default JPEG quality
QUALITY_DEADLINE = 300  # seconds the quality check may take
REQUEST_TIMEOUT = 30.0
PHASES = ("thumbor", "batch", "single", "floor")
PHASE_NAMES = {
    "thumbor": "(1) thumbor",
    "batch": "(2) service, folder as one batch",
    "single": "(3) service, one job per image",
    "floor": "(4) floor",
}


def fit_in(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size thumbor's fit-in gives size in box (transformer.fit_in_resize): never larger, rounded half up."""
    (width, height), (box_w, box_h) = size, box
    if box_w >= width and box_h >= height:
        return width, height
    if width / box_w >= height / box_h:
        return box_w, round(height * box_w / width + 1e-5)
    return round(width * box_h / height + 1e-5), box_h


def floor_thumbnail(task: tuple[str, str]) -> tuple[int, int]:
    """The floor's work for one image, file to file: thumbor's PIL engine's steps, nothing else."""
    source, out_dir = task
    with Image.open(source) as img:
        target = fit_in(img.size, (SIZE, SIZE))
        img.draft("RGB", target)
        thumb = img.resize(target, Image.Resampling.LANCZOS)
    thumb.save(os.path.join(out_dir, os.path.basename(source)), "JPEG", quality=FLOOR_QUALITY)
    return thumb.size


def _floor_worker(tasks, done) -> None:
    """A floor process: thumbnails each chunk of tasks it gets, answers the sizes made (or the error), until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C is the bench's to handle: it stops this process
    while (chunk := tasks.get()) is not None:
        try:
            done.put([floor_thumbnail(task) for task in chunk])
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

    def map(self, tasks: list[tuple[str, str]], chunk: int, deadline_s: float) -> list[tuple[int, int]]:
        chunks = [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
        for part in chunks:
            self.tasks.put(part)
        made, stop_at = [], time.monotonic() + deadline_s
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


# --- thumbor, in a virtual environment of its own -----------------------------------------------------


def ensure_thumbor(venv: Path) -> Path:
    """venv's thumbor executable, installing thumbor==THUMBOR_VERSION there first if it is not."""
    venv = venv.expanduser()
    exe = venv / "bin" / "thumbor"

    def version() -> str:
        try:
            return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if f"v{THUMBOR_VERSION}" in version():
        return exe
    if not (venv / "bin" / "python").exists():
        log(f"thumbor: making a virtual environment in {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    log(f"thumbor: pip install thumbor=={THUMBOR_VERSION} into {venv} (once)")
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"thumbor=={THUMBOR_VERSION}"],
        check=True,
        timeout=900,
    )
    found = version()
    if f"v{THUMBOR_VERSION}" not in found:
        raise RuntimeError(f"{exe} --version said {found!r}, not thumbor {THUMBOR_VERSION}")
    return exe


class Thumbor:
    """`thumbor --port P --conf F --processes N` on 127.0.0.1 serving the files under root. It stays in this
    process's session, as run.py and the pool do: Linux's autogroup scheduling gives each session one share of
    a busy machine, and thumbor in a session of its own would get a share more than the service under load.
    stop() ends it, every process by its pid (a Ctrl+C in the terminal reaches it too)."""

    def __init__(self, exe: Path, root: Path, workdir: Path, processes: int):
        self.port = free_port()
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
        self.log_path = workdir / "thumbor.log"
        command = [exe, "--ip", "127.0.0.1", "--port", str(self.port), "--conf", str(conf)]
        # --log-level warning (its default, said aloud): tornado's line per request is at INFO.
        command += ["--processes", str(processes), "--log-level", "warning"]
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=workdir, stdout=output, stderr=subprocess.STDOUT)
        self.processes = processes

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 90) -> None:
        """Until /healthcheck answers 200 and every process (parent + one per core) is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"thumbor exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/healthcheck")
                status = connection.getresponse().status
                connection.close()
                if status == 200 and len(self.pids()) >= self.processes + (self.processes > 1):
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"thumbor did not answer /healthcheck within {timeout:.0f} s:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [child.pid for child in root.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self) -> None:
        """SIGTERM to each of its processes, by pid; whatever is left after 10 s gets SIGKILL."""
        procs = []
        for pid in self.pids():
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
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass


# --- clients --------------------------------------------------------------------------------------------


def thumbor_getter(port: int):
    """(get(name) -> JPEG bytes, close): one keep-alive connection; raises unless the answer is a JPEG thumbnail."""
    state: dict = {"conn": None}

    def get(name: str) -> bytes:
        for attempt in range(2):  # one reconnect if the server closed the kept-alive connection
            if state["conn"] is None:
                state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
            try:
                state["conn"].request("GET", f"/unsafe/fit-in/{SIZE}x{SIZE}/{quote(name)}")
                answer = state["conn"].getresponse()
                body = answer.read()
                break
            except (http.client.HTTPException, ConnectionError):
                state["conn"].close()
                state["conn"] = None
                if attempt:
                    raise
        kind = answer.getheader("Content-Type")
        if answer.status != 200 or kind != "image/jpeg" or body[:3] != b"\xff\xd8\xff":
            raise RuntimeError(f"thumbor answered {name} with {answer.status} {kind}: {body[:80]!r}")
        with Image.open(io.BytesIO(body)) as thumb:  # the header only: cheap
            if thumb.format != "JPEG" or max(thumb.size) != SIZE:
                raise RuntimeError(f"thumbor's thumbnail of {name} is {thumb.format} {thumb.size}")
        return body

    def close():
        if state["conn"] is not None:
            state["conn"].close()

    return get, close


def check_thumbnail(name: str, answer: dict) -> dict:
    result = answer.get("result") or {}
    if (
        answer.get("status") != "finished"
        or result.get("format") != "JPEG"
        or max(result.get("width", 0), result.get("height", 0)) != SIZE
    ):
        raise RuntimeError(f"the service's job for {name} ended with {answer}")
    return result


def service_single(port: int):
    """(make(name) -> result, close): POST one image with wait=10 (and GET /result if it has not ended by then)."""
    client = Client(port, timeout=REQUEST_TIMEOUT)

    def make(name: str) -> dict:
        fields = {"imagePath": f"{FOLDER}/{name}", "width": SIZE, "height": SIZE, "wait": 10}
        status, answer = post_form(client, "/imageapi", fields)
        if status == 202:
            answer = wait_result(client, answer["jobId"], wait=10, deadline_s=60)
        elif status != 200:
            raise RuntimeError(f"POST /imageapi {name} answered {status}: {answer}")
        return check_thumbnail(name, answer)

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


# --- the run --------------------------------------------------------------------------------------------


def measured(name: str, images: int, server_pids, work, processes: Processes | None = None) -> dict:
    """Run work() and return its wall time, images/s, the server's CPU and waiting ms per image, this process's
    (the clients') CPU ms per image and the rest of the machine's busy share of the cores meanwhile."""
    me = psutil.Process()
    pids = server_pids()
    parts = cpu_usage(processes) if processes else None
    server0, client0, machine0 = tree_cpu(*pids), me.cpu_times(), machine_cpu()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    server1, client1, machine1 = tree_cpu(*pids), me.cpu_times(), machine_cpu()
    if sorted(server_pids()) != sorted(pids):
        raise RuntimeError(f"{name}: the server's processes changed during the phase (one died or was restarted)")
    server = server1[0] - server0[0]
    client = (client1.user + client1.system) - (client0.user + client0.system)
    busy = machine1[0] - machine0[0]
    cores = os.cpu_count() or 1
    figures = {
        "seconds": seconds,
        "images_per_s": images / seconds,
        "cpu_ms_per_image": 1000 * server / images,
        "waiting_ms_per_image": None if None in (server0[1], server1[1]) else 1000 * (server1[1] - server0[1]) / images,
        "client_cpu_ms_per_image": 1000 * client / images,
        "rest_of_machine_share": max(0.0, busy - server - client) / (cores * seconds),
    }
    if processes:
        delta = cpu_delta(parts, cpu_usage(processes))
        groups = {
            "workers": [k for k in delta if k.startswith("image worker")],
            "api": ["api (master + workers)"],
            "redis": ["redis-server"],
            "run.py": ["run.py"],
        }
        figures["cpu_ms_per_image_by_process"] = {
            group: 1000 * sum(delta[k][0] for k in keys if k in delta) / images for group, keys in groups.items()
        }
    return figures


def psnr(image: Image.Image, reference: Image.Image) -> float:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def quality(sources: list[Path], images_root: Path, thumbor_port: int, service_port: int, out: Path) -> dict:
    """Mean PSNR (dB) and the sizes of each's thumbnails of sources vs full decode + LANCZOS to the same size."""
    get, close_thumbor = thumbor_getter(thumbor_port)
    make, close_service = service_single(service_port)
    scores: dict[str, list[float]] = {"service": [], "thumbor": [], "floor": []}
    sizes: dict[str, set] = {key: set() for key in scores}
    started = time.monotonic()
    log(f"quality: PSNR of {len(sources)} thumbnails each vs full decode + LANCZOS")
    try:
        for source in sources:
            if time.monotonic() - started > QUALITY_DEADLINE:
                raise TimeoutError(f"the quality check took more than {QUALITY_DEADLINE} s")
            with Image.open(source) as img:
                full = img.convert("RGB")  # the whole image decoded
            service_path = images_root / make(source.name)["path"]
            floor_thumbnail((str(source), str(out)))
            made = {
                "service": service_path.read_bytes(),
                "thumbor": get(source.name),
                "floor": (out / source.name).read_bytes(),
            }
            references: dict[tuple[int, int], Image.Image] = {}
            for key, data in made.items():
                with Image.open(io.BytesIO(data)) as thumb:
                    thumb = thumb.convert("RGB")
                if thumb.size not in references:
                    references[thumb.size] = full.resize(thumb.size, Image.Resampling.LANCZOS)
                scores[key].append(psnr(thumb, references[thumb.size]))
                sizes[key].add(f"{thumb.width}x{thumb.height}")
    finally:
        close_thumbor()
        close_service()
    log(f"quality: done in {time.monotonic() - started:.1f} s")
    return {
        key: {"mean_psnr_db": statistics.mean(values), "min_psnr_db": min(values), "sizes": sorted(sizes[key])}
        for key, values in scores.items()
    }


def phase_deadline(images: int) -> float:
    """Seconds one phase of `images` images may take: generous, still bounded."""
    return 60 + 2.0 * images


def rounds_of(
    args, names, tasks, images_root: Path, pool: FloorPool, thumbor: Thumbor, running, processes: Processes
) -> dict[str, list[dict]]:
    n = len(names)
    deadline = phase_deadline(n)
    runs: dict[str, list[dict]] = {phase: [] for phase in PHASES}
    client = Client(running.port, timeout=REQUEST_TIMEOUT)

    def thumbor_phase():
        from_threads(names, args.clients, lambda: thumbor_getter(thumbor.port), deadline)

    def batch_phase():
        status, answer = post_form(client, "/imageapi", {"imagePath": FOLDER, "width": SIZE, "height": SIZE})
        if status != 202:
            raise RuntimeError(f"POST /imageapi {FOLDER} answered {status}: {answer}")
        answer = wait_result(client, answer["jobId"], wait=30, deadline_s=deadline)
        result = answer.get("result") or {}
        if answer["status"] != "finished" or result.get("total") != n or result.get("failed"):
            raise RuntimeError(
                f"the batch did not finish cleanly: {answer.get('status')}, total={result.get('total')}, "
                f"failed={result.get('failed')}, error={answer.get('error')}"
            )
        for entry in result.get("images", []):
            check_thumbnail(entry.get("image"), {"status": "finished", "result": entry.get("result")})

    def single_phase():
        from_threads(names, args.clients, lambda: service_single(running.port), deadline)

    def floor_phase():
        made = pool.map(tasks, max(1, n // (8 * len(pool.workers))), deadline)
        if len(made) != n or any(max(size) != SIZE for size in made):
            raise RuntimeError(f"the floor made {len(made)} thumbnails of sizes {set(made)}")

    try:
        for number in range(args.rounds):
            for phase, work, pids, parts in (
                ("thumbor", thumbor_phase, thumbor.pids, None),
                ("batch", batch_phase, lambda: [running.process.pid], processes),
                ("single", single_phase, lambda: [running.process.pid], processes),
                ("floor", floor_phase, pool.pids, None),
            ):
                if phase in ("batch", "single"):
                    shutil.rmtree(images_root / "resized", ignore_errors=True)  # so every round makes them anew
                run = measured(phase, n, pids, work, parts)
                runs[phase].append(run)
                log(
                    f"round {number + 1} {PHASE_NAMES[phase]}: {run['images_per_s']:.1f} images/s "
                    f"({run['seconds']:.2f} s), {run['cpu_ms_per_image']:.2f} CPU ms/image, "
                    f"clients {run['client_cpu_ms_per_image']:.2f}, rest of machine "
                    f"{100 * run['rest_of_machine_share']:.0f}% of the cores"
                )
    finally:
        client.close()
    return runs


def median_run(runs: list[dict], key: str) -> dict:
    middle = statistics.median(run[key] for run in runs)
    return min(runs, key=lambda run: abs(run[key] - middle))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200, help="1920x1280 JPEGs, each once a phase (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the four phases (default 3)")
    parser.add_argument(
        "--clients", type=int, default=8, help="client threads of the thumbor and single-image phases (default 8)"
    )
    parser.add_argument(
        "--thumbor-venv",
        type=Path,
        default=DEFAULT_VENV,
        help=f"virtual environment with thumbor {THUMBOR_VERSION}, made there if missing (default {DEFAULT_VENV})",
    )
    args = parser.parse_args(argv)
    if not (QUALITY_IMAGES <= args.images <= 5000 and 1 <= args.rounds <= 20 and 1 <= args.clients <= 64):
        parser.error(f"--images must be {QUALITY_IMAGES}..5000, --rounds 1..20, --clients 1..64")

    def stop_on_sigterm(signum, frame):
        raise SystemExit(143)  # unwinds through the finally blocks, which stop thumbor, run.py and the floor

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    load_start = os.getloadavg()
    log(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    cores = os.cpu_count() or 1
    exe = ensure_thumbor(args.thumbor_venv)
    sources = corpus.jpegs(corpus.DEFAULT_OUT, args.images)
    sizes_kb = [p.stat().st_size / 1e3 for p in sources]
    with Image.open(sources[0]) as first:
        dims = f"{first.width}x{first.height}"
    log(f"corpus: {len(sources)} JPEGs of {dims}, mean {statistics.mean(sizes_kb):.0f} KB")

    # A backstop over the per-request and per-phase limits: past it, print every thread's stack and stop.
    limit = 600 + args.rounds * len(PHASES) * phase_deadline(args.images)

    def on_alarm(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise TimeoutError(f"the run took more than {limit:.0f} s (the stacks above show where it was)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(limit))
    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    thumbor = pool = None
    thumbor_log: list[str] = []
    try:
        images_root = tmp / "images"
        (images_root / FOLDER).mkdir(parents=True)
        (images_root / WARMUP).mkdir()
        for path in sources:
            link_or_copy(path, images_root / FOLDER / path.name)
        for path in sources[:WARMUP_IMAGES]:
            link_or_copy(path, images_root / WARMUP / path.name)
        names = sorted(p.name for p in (images_root / FOLDER).iterdir())
        for name in names:  # every phase reads files already in the page cache
            (images_root / FOLDER / name).read_bytes()
        out = tmp / "floor-out"
        out.mkdir()
        tasks = [(str(images_root / FOLDER / name), str(out)) for name in names]

        pool = FloorPool(cores)  # first: its processes are forked before this process has any threads
        pool.map(tasks[: 2 * cores], 1, 120)  # warm: the processes have imported PIL and run once
        log(f"thumbor {THUMBOR_VERSION}: {cores} processes")
        thumbor = Thumbor(exe, images_root / FOLDER, tmp, cores)
        thumbor.wait_ready()
        warm = names[:WARMUP_IMAGES]
        from_threads(warm + warm, args.clients, lambda: thumbor_getter(thumbor.port), 120)
        with service(tmp / "work", images_root, tmp / "logs", SERVICE_WORKERS) as running:
            processes = Processes(running.process.pid)
            client = Client(running.port, timeout=REQUEST_TIMEOUT)
            try:
                status, answer = post_form(client, "/imageapi", {"imagePath": WARMUP, "width": SIZE, "height": SIZE})
                if status != 202:
                    raise RuntimeError(f"the warm-up batch answered {status}: {answer}")
                wait_result(client, answer["jobId"], wait=30, deadline_s=120)
            finally:
                client.close()
            from_threads(warm, args.clients, lambda: service_single(running.port), 120)
            log(
                f"{args.rounds} rounds of: thumbor, service batch, service single, floor; "
                f"{len(names)} images each, {args.clients} clients"
            )
            runs = rounds_of(args, names, tasks, images_root, pool, thumbor, running, processes)
            step = len(sources) // QUALITY_IMAGES
            picked = [images_root / FOLDER / names[i * step] for i in range(QUALITY_IMAGES)]
            psnrs = quality(picked, images_root, thumbor.port, running.port, out)
            notable = running.notable_count
    finally:
        signal.alarm(0)
        if pool is not None:
            pool.stop()
        if thumbor is not None:
            thumbor.stop()
            thumbor_log = thumbor.log_tail(1000).splitlines()
            if thumbor_log:
                log(f"thumbor logged {len(thumbor_log)} lines, the last: " + " | ".join(thumbor_log[-3:]))
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(names)
    best = {phase: max(run["images_per_s"] for run in runs[phase]) for phase in PHASES}
    cpu = {phase: statistics.median(run["cpu_ms_per_image"] for run in runs[phase]) for phase in PHASES}
    rest = statistics.median(run["rest_of_machine_share"] for phase in PHASES for run in runs[phase])
    load_end = os.getloadavg()
    log(f"load average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    figures = {
        "images": n,
        "image_size": dims,
        "mean_jpeg_kb": statistics.mean(sizes_kb),
        "rounds": args.rounds,
        "clients": args.clients,
        "thumbor_version": THUMBOR_VERSION,
        "thumbor_processes": cores,
        "service_workers": SERVICE_WORKERS,
        "loadavg_1m_at_start": load_start[0],
        **{f"{phase}_best_images_per_s": best[phase] for phase in PHASES},
        **{f"{phase}_median_cpu_ms_per_image": cpu[phase] for phase in PHASES},
        "batch_over_thumbor_images_per_s": best["batch"] / best["thumbor"],
        "thumbor_over_batch_cpu": cpu["thumbor"] / cpu["batch"],
        "batch_over_floor_images_per_s": best["batch"] / best["floor"],
        "floor_over_batch_cpu": cpu["floor"] / cpu["batch"],
        "single_over_thumbor_images_per_s": best["single"] / best["thumbor"],
        "thumbor_over_single_cpu": cpu["thumbor"] / cpu["single"],
        "rest_of_machine_share_median": rest,
        "psnr": psnrs,
        "service_notable_log_lines": notable,
        "thumbor_log_lines": len(thumbor_log),
        "runs": runs,
    }
    cpu_note = "ratio = thumbor / service: > 1, the service is cheaper"

    def parts(phase: str) -> str:
        split = median_run(runs[phase], "cpu_ms_per_image").get("cpu_ms_per_image_by_process", {})
        return ", ".join(f"{group} {value:.2f}" for group, value in split.items())

    rows = [
        (f"images: {n} JPEGs {dims}, mean KB (bench/corpus.py)", statistics.mean(sizes_kb), None, None),
        ("load average 1 min: at start (value), at end (baseline)", load_start[0], load_end[0], None),
        (f"rest of the machine's CPU, % of {cores} cores (median phase)", 100 * rest, None, None),
        (
            f"(1) thumbor {THUMBOR_VERSION}, {cores} processes, {args.clients} clients: "
            f"images/s, best of {args.rounds}",
            best["thumbor"],
            None,
            None,
        ),
        ("(1) thumbor: CPU ms per image, median round", cpu["thumbor"], None, None),
        (
            f"(2) service batch, {SERVICE_WORKERS} workers: images/s, best; vs thumbor",
            best["batch"],
            best["thumbor"],
            ...,
        ),
        (
            f"(2) service batch: CPU ms per image, median; vs thumbor ({cpu_note})",
            cpu["batch"],
            cpu["thumbor"],
            cpu["thumbor"] / cpu["batch"],
        ),
        ("    of which, ms per image", parts("batch"), None, None),
        (
            f"(3) service single, {args.clients} clients: images/s, best; vs thumbor",
            best["single"],
            best["thumbor"],
            ...,
        ),
        (
            f"(3) service single: CPU ms per image, median; vs thumbor ({cpu_note})",
            cpu["single"],
            cpu["thumbor"],
            cpu["thumbor"] / cpu["single"],
        ),
        ("    of which, ms per image", parts("single"), None, None),
        (
            f"(4) floor, {cores} processes, draft + LANCZOS + save q{FLOOR_QUALITY}: images/s, best",
            best["floor"],
            None,
            None,
        ),
        ("(4) floor: CPU ms per image, median round", cpu["floor"], None, None),
        ("service batch vs floor: images/s", best["batch"], best["floor"], ...),
        (
            "service batch vs floor: CPU ms per image (ratio = floor / service)",
            cpu["batch"],
            cpu["floor"],
            cpu["floor"] / cpu["batch"],
        ),
        (
            f"PSNR dB vs full decode + LANCZOS, {QUALITY_IMAGES} images: service vs thumbor",
            psnrs["service"]["mean_psnr_db"],
            psnrs["thumbor"]["mean_psnr_db"],
            ...,
        ),
        ("PSNR dB: floor (thumbor's steps in-process)", psnrs["floor"]["mean_psnr_db"], None, None),
        (
            "thumbnail sizes: service / thumbor / floor",
            " / ".join(",".join(psnrs[key]["sizes"]) for key in ("service", "thumbor", "floor")),
            None,
            None,
        ),
    ]
    if notable:
        rows.append(("service: log lines of note (worker restarts, tracebacks, ERROR)", notable, None, None))
    report("peers", rows, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

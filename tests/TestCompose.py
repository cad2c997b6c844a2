"""`docker compose up --build` as a user runs it, on real container engines: Docker Compose v2 on dockerd,
then podman-compose on podman (tests/engines.py finds or starts each; stand-ins for the base images where
they cannot be pulled). The stack is built from a copy of the working tree, started with no .env, and
used over HTTP with the README's own requests; a worker killed with kill -9 mid-batch is restarted by the
engine and the batch ends with every image done once; `down` takes under 30 s and leaves nothing running.

On the main before this test (51bd0e3's parent) it failed for the reasons issue 21 gives: the API container
never started (rq-dashboard needs `six`, which the API image lacked: "ModuleNotFoundError: No module named
'six'", gunicorn's "Worker failed to boot"); the classifier ran as root (`id -u` answered 0); under
podman-compose a killed worker stayed dead ("redis-password: container state improper"); and, found here
once the API booted, every request was a 500 because the API's metrics tmpfs was root's.

An engine is skipped, saying why, only where it cannot be had at all; in CI (CI=true, where .ci/run installs
both) that is a failure instead. The first build takes about 3 minutes an engine; later ones reuse layers.
"""

import io
import os
import shutil
import signal
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import pytest
import requests
from PIL import Image

from imagejobs.embedded_redis import free_port
from tests.engines import ENGINES, ROOT, Unavailable
from tests.support import JPEG
from tests.support import run_command as run

APP_UID = APP_GID = 1000  # the compose file's default APP_UID/APP_GID: the owner of ./images and ./logs
APP_SERVICES = ("api", "worker", "classifier")
BUILD_TIMEOUT = 1800
READY_TIMEOUT = 240
DOWN_WITHIN = 30
HEALTHY_WITHIN = 90  # the checks run every 30 s (Dockerfile, docker-compose.yml)
BATCH_IMAGES = 300
BATCH_TIMEOUT = 300  # a killed worker's job is found abandoned within about a minute (imagejobs/worker.py)

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 600)


class Stack:
    """One compose project of the working tree's copy on one engine."""

    def __init__(self, engine, folder: Path):
        self.engine = engine
        self.folder = folder
        self.project = f"imageresize-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        # No .env: only what a user may export, set so as not to touch anything of the machine's own (a free
        # port instead of 5000, a tag of its own instead of the user's imageresize:latest).
        self.env = {**engine.env, "PORT": str(self.port), "IMAGE_TAG": "compose-test"}
        self.url = f"http://127.0.0.1:{self.port}/"

    def compose(self, *args, timeout=600, check=True) -> subprocess.CompletedProcess:
        argv = [*self.engine.compose_command(), "-p", self.project, *args]
        return run(argv, env=self.env, timeout=timeout, check=check, cwd=self.folder)

    def container(self, service: str) -> str:
        names = self.engine.containers(self.project, service)
        assert len(names) == 1, f"{service}: {names}"
        return names[0]

    def logs(self) -> str:
        return self.compose("logs", "--tail", "40", check=False, timeout=120).stdout[-6000:]

    def wait_until_ready(self) -> dict:
        """/health with Redis and both workers (images and classify), as a user would wait for it."""
        deadline, last = time.monotonic() + READY_TIMEOUT, None
        while time.monotonic() < deadline:
            try:
                last = requests.get(self.url + "health", timeout=5)
                if last.status_code == 200 and last.json()["workers"] >= 2:
                    return last.json()
            except requests.RequestException as exc:
                last = exc
            time.sleep(1)
        raise AssertionError(f"not ready after {READY_TIMEOUT} s ({last}):\n{self.logs()}")


def working_tree_copy(dest: Path) -> Path:
    """The files a fresh clone of the working tree has (tracked and new, not ignored), with ./images and
    ./logs given to the containers' user as the README asks of a user."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for name in ("images", "logs"):
        (dest / name).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in [dest / name, *(dest / name).rglob("*")]:
                os.chown(path, APP_UID, APP_GID)
    return dest


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request):
    engine = ENGINES[request.param]()
    try:
        engine.start()
    except Unavailable as exc:
        engine.stop()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{request.param}: {exc} (.ci/run installs both engines)")
        pytest.skip(f"{request.param}: {exc}")
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def stack(engine, tmp_path_factory):
    stack = Stack(engine, working_tree_copy(tmp_path_factory.mktemp(f"stack-{engine.name}")))
    engine.import_base_images()
    try:
        stack.compose("up", "-d", "--build", timeout=BUILD_TIMEOUT)
        engine.watch_health(stack.project)
        stack.wait_until_ready()
        yield stack
    finally:
        engine.unwatch_health()
        stack.compose("down", "-v", "--timeout", str(DOWN_WITHIN), check=False, timeout=300)


def submit_and_wait(stack, method="POST", params=None, data=None, files=None, wait=30) -> dict:
    answer = requests.request(method, stack.url + "imageapi", params=params, data=data, files=files, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["jobId"]
    done = requests.get(stack.url + f"result/{job_id}", params={"wait": wait}, timeout=wait + 10)
    assert done.status_code == 200 and done.json()["status"] == "finished", done.text
    return done.json()


# --- the README's requests ------------------------------------------------------------------------------------


def test_size(stack):
    answer = requests.get(stack.url + "imageapi", params={"imagePath": "demo/castle_image.jpg"}, timeout=30)
    assert answer.status_code == 202 and answer.headers["Location"]
    done = requests.get(stack.url + f"result/{answer.json()['jobId']}", params={"wait": 20}, timeout=30).json()
    assert done["result"] == {"width": 800, "height": 480, "format": "JPEG", "mode": "RGB"}


def test_a_folder_of_thumbnails_and_its_zip(stack):
    done = submit_and_wait(stack, data={"imagePath": "demo", "width": "200"})
    entries = done["result"]["images"]
    assert [entry["result"]["path"] for entry in entries] == [
        "resized/demo/CogentLabs_resized.jpg",
        "resized/demo/castle_image_resized.jpg",
        "resized/demo/jemma_resized.png",
    ]
    for entry in entries:  # written by the containers' user into the host's ./images
        assert (stack.folder / "images" / entry["result"]["path"]).stat().st_uid == APP_UID
    files = requests.get(stack.url + "result/file", params={"jobId": done["jobId"]}, timeout=30)
    assert files.status_code == 200 and files.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(files.content)) as archive:
        assert sorted(archive.namelist()) == sorted(e["result"]["path"].removeprefix("resized/") for e in entries)
        with Image.open(io.BytesIO(archive.read("demo/castle_image_resized.jpg"))) as thumb:
            assert thumb.size == (167, 100)  # in the 200x100 box, as the README shows


def test_an_upload(stack):
    done = submit_and_wait(stack, files=[("image", ("a.jpg", JPEG, "image/jpeg"))], data={"action": "size"})
    assert done["result"]["width"] == 800


def test_classify_names_the_castle(stack):
    done = submit_and_wait(
        stack, params={"action": "classify", "top": "3"}, data={"imagePath": "demo/castle_image.jpg"}
    )
    assert done["result"]["predictions"][0]["label"] == "castle"


def test_a_plot(stack):
    done = submit_and_wait(
        stack, params={"action": "plot", "kind": "histogram"}, data={"imagePath": "demo/castle_image.jpg"}
    )
    plot = requests.get(stack.url + done["result"]["plot"].lstrip("/"), timeout=30)
    assert plot.status_code == 200 and plot.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(plot.content)) as png:
        assert png.format == "PNG" and png.width > 200


# --- the containers themselves --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_app_container_runs_as_its_non_root_user(stack, service):
    said = stack.engine.run("exec", stack.container(service), "id", "-u").stdout.strip()
    assert said == str(APP_UID), f"{service} runs as uid {said}"


def test_every_service_reports_itself_healthy(stack):
    """Each container's own healthcheck passes: the API's /health probe, the workers' `worker.py --check`,
    Redis's authenticated PING. (Under podman without systemd the test runs the checks, as a timer would.)"""
    deadline = time.monotonic() + HEALTHY_WITHIN
    for service in ("redis", *APP_SERVICES):
        container = stack.container(service)
        while (status := health(stack.engine.inspect(container))) != "healthy":
            assert time.monotonic() < deadline, f"{service} is {status}:\n{stack.logs()}"
            time.sleep(2)


def health(inspected: dict) -> str:
    state = inspected["State"]
    return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "none")


def worker_process(stack) -> tuple[str, int]:
    """The worker container and the host pid of its `python worker.py images` (the child of its init)."""
    container = stack.container("worker")
    init = stack.engine.inspect(container)["State"]["Pid"]
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    assert len(children) == 1, children
    return container, int(children[0])


def test_a_worker_killed_mid_batch_is_restarted_and_the_batch_loses_nothing(stack):
    """kill -9 of the worker's process while it works through a folder: the engine restarts the container
    (restart: unless-stopped; under podman-compose too, where it stayed dead), RQ finds the chunk abandoned
    and runs it again, and the batch ends with every image done and none twice."""
    if not Path("/proc/1/task/1/children").exists() or os.geteuid() != 0:
        pytest.skip("killing a container's process from the host needs root and /proc's children lists")
    folder = stack.folder / "images" / "killed"
    folder.mkdir()
    big = Image.effect_noise((2400, 1800), 64).convert("RGB")
    for index in range(3):  # three sources, BATCH_IMAGES links to them: the disk holds three
        big.rotate(index * 90, expand=False).save(folder / f"source{index}.jpg", quality=90)
    for index in range(BATCH_IMAGES - 3):
        os.link(folder / f"source{index % 3}.jpg", folder / f"photo{index:04d}.jpg")
    for path in [folder, *folder.iterdir()]:
        os.chown(path, APP_UID, APP_GID)

    answer = requests.post(
        stack.url + "imageapi",
        data={"imagePath": "killed", "width": "1024", "height": "1024", "force": "true"},
        timeout=30,
    )
    job_id = answer.json()["jobId"]
    progress = {}
    while progress.get("done", 0) < 20:
        seen = progress.get("done", 0) + progress.get("failed", 0)
        state = requests.get(stack.url + f"result/{job_id}", params={"wait": 5, "seen": seen}, timeout=20).json()
        assert state["status"] in ("queued", "started"), f"the batch ended before the kill: {state['status']}"
        progress = state.get("progress", {})
    container, pid = worker_process(stack)
    restarts = stack.engine.inspect(container)["RestartCount"]
    os.kill(pid, signal.SIGKILL)

    deadline = time.monotonic() + BATCH_TIMEOUT
    while (state := requests.get(stack.url + f"result/{job_id}", params={"wait": 20}, timeout=40).json())["status"] in (
        "queued",
        "started",
    ):
        assert time.monotonic() < deadline, f"the batch did not end: {state.get('progress')}\n{stack.logs()}"
    assert state["status"] == "finished", state
    result = state["result"]
    assert (result["total"], result["done"], result["failed"]) == (BATCH_IMAGES, BATCH_IMAGES, 0)
    names = [entry["image"] for entry in result["images"]]
    assert len(names) == len(set(names)) == BATCH_IMAGES  # every image once
    written = sorted(path.name for path in (stack.folder / "images" / "resized" / "killed").iterdir())
    thumbnails = [name for name in written if not name.startswith(".")]
    assert len(thumbnails) == BATCH_IMAGES
    # A worker killed while writing leaves its hidden temporary file (.<name>.<hex>.tmp, which no listing shows),
    # never a partial thumbnail (seen once under podman: 300 thumbnails and one such file).
    assert all(name.endswith(".tmp") for name in written if name.startswith(".")), written
    assert stack.engine.inspect(container)["RestartCount"] > restarts  # the same container, started again
    assert stack.container("worker") == container


def test_down_stops_everything_within_30_s(stack):
    """As a user stops it: the test's own healthcheck loop (podman's stand-in for systemd's timers) ends first,
    so no `podman healthcheck run` execs into a container while it stops (once, under podman, down took 31 s)."""
    stack.engine.unwatch_health()
    started = time.monotonic()
    stack.compose("down", "-v", "--timeout", str(DOWN_WITHIN), timeout=120)
    took = time.monotonic() - started
    assert took < DOWN_WITHIN, f"down took {took:.1f} s"
    assert stack.engine.containers(stack.project, every=True) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(stack.url + "health", timeout=5)

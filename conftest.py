"""The test suite's own Redis and workers.

Before any test module is imported, a private redis-server starts on a free port in a temporary
folder (never the machine's own Redis), and the environment points every process at it and at a
temporary images root. Workers are started with the same command the containers run.
"""
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTDATA = HERE / "testdata"
_session = {}


def pytest_configure(config):
    """Start the suite's Redis and set the environment, before RestAPI or config is imported."""
    import embedded_redis

    base = Path(tempfile.mkdtemp(prefix="imageapi-tests-"))
    password, port = secrets.token_urlsafe(16), embedded_redis.free_port()
    process = embedded_redis.start(base / "redis", port, password, appendonly=False)
    url = embedded_redis.url(port, password)
    embedded_redis.wait_until_up(url, process)
    (base / "images").mkdir()
    # Image URLs may reach the tests' own servers on loopback; every other private range stays refused.
    os.environ.update({"REDIS_URL": url, "IMAGES_DIR": str(base / "images"), "LOGS_DIR": str(base / "logs"),
                       "ALLOWED_URL_NETWORKS": "127.0.0.0/8"})
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    _session.update(base=base, redis=process, url=url, port=port, password=password)


def pytest_unconfigure(config):
    process = _session.get("redis")
    if process is not None:
        process.terminate()
        process.wait(5)
        process.stderr.close()
        shutil.rmtree(_session["base"], ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _session["url"]


@pytest.fixture(scope="session")
def images_root() -> Path:
    return Path(os.environ["IMAGES_DIR"]).resolve()


def start_process(command: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=HERE, env={**os.environ, **(env or {})}, **kwargs)


def stop_processes(processes, timeout: float = 10) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_workers(count: int, timeout: float = 20) -> None:
    from rq import Worker

    from RedisConfig import connection

    deadline = time.monotonic() + timeout
    while Worker.count(connection=connection()) < count:
        assert time.monotonic() < deadline, f"{count} workers did not register within {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def workers():
    """Two image workers, started as the containers start them: `python worker.py images`."""
    processes = [start_process([sys.executable, "worker.py", "images"], stdout=subprocess.DEVNULL) for _ in range(2)]
    wait_for_workers(2)
    yield processes
    stop_processes(processes)


@pytest.fixture
def client(workers):
    """Flask's test client of the real app, with real workers and Redis behind it."""
    from RestAPI import app

    return app.test_client()


@pytest.fixture
def folder(images_root, request) -> Path:
    """An empty folder under the images root, named for the test."""
    path = images_root / re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def copy_sample(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TESTDATA / name, dest)
    return dest

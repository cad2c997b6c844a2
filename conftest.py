"""The test suite's own Redis and workers, and the fixtures every test file may use.

Before any test module is imported, a private redis-server starts on a free port in a temporary
folder (never the machine's own Redis), and the environment points every process at it and at a
temporary images root. Workers are started with the same command the containers run. Helpers that
are not fixtures are in tests/support.py.
"""

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import (
    LocalServer,
    LocalServer6,
    Server,
    ipv6_loopback_works,
    start_process,
    start_server,
    stop_processes,
    wait_for_workers,
)

_session = {}


def pytest_configure(config):
    """Start the suite's Redis and set the environment, before the service's modules are imported."""
    from imagejobs import embedded_redis

    base = Path(tempfile.mkdtemp(prefix="imageapi-tests-"))
    password, port = secrets.token_urlsafe(16), embedded_redis.free_port()
    process = embedded_redis.start(base / "redis", port, password, appendonly=False, die_with_parent=True)
    url = embedded_redis.url(port, password)
    embedded_redis.wait_until_up(url, process)
    (base / "images").mkdir()
    # Image URLs may reach the tests' own servers on loopback; every other private range stays refused.
    os.environ.update(
        {
            "REDIS_URL": url,
            "IMAGES_DIR": str(base / "images"),
            "LOGS_DIR": str(base / "logs"),
            "ALLOWED_URL_NETWORKS": "127.0.0.0/8",
        }
    )
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


@pytest.fixture(scope="session")
def workers():
    """Two image workers, started as the containers start them: `python worker.py images`."""
    processes = [start_process([sys.executable, "worker.py", "images"], stdout=subprocess.DEVNULL) for _ in range(2)]
    wait_for_workers(2)
    yield processes
    stop_processes(processes)


@pytest.fixture(scope="session")
def app():
    """The API as gunicorn serves it (the environment's settings)."""
    from RestAPI import app

    return app


@pytest.fixture
def client(app, workers):
    """Flask's test client of the real app, with real workers and Redis behind it."""
    return app.test_client()


@pytest.fixture
def configured(workers):
    """A test client of an app built with some settings changed: configured(max_queue_depth=1)."""
    from imagejobs.api import create_app
    from imagejobs.config import Settings, settings

    def configure(**changes):
        return create_app(Settings(**{**settings.model_dump(), **changes})).test_client()

    return configure


@pytest.fixture
def folder(images_root, request) -> Path:
    """An empty folder under the images root, named for the test."""
    path = images_root / re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


# --- local HTTP servers that image URLs point at -----------------------------------------------------------


@pytest.fixture(scope="module")
def server4():
    yield from start_server(LocalServer, "127.0.0.1")


@pytest.fixture(scope="module")
def server6():
    if not ipv6_loopback_works():
        pytest.skip("IPv6 loopback (::1) is not available here")
    yield from start_server(LocalServer6, "::1")


@pytest.fixture
def server(server4) -> Server:
    server4.requests.clear()
    return server4


@pytest.fixture(params=["ipv4", "ipv6"])
def any_server(request) -> Server:
    """The IPv4 server, then the IPv6 one."""
    chosen = request.getfixturevalue("server4" if request.param == "ipv4" else "server6")
    chosen.requests.clear()
    return chosen

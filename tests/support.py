"""What the tests share: where things are, starting and stopping processes, talking to the API, the
service under `python run.py`, and local HTTP servers for image URLs. Fixtures are in conftest.py."""

import io
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

import psutil
import pytest
from PIL import Image as PILImage
from PIL import ImageFile
from redis import AuthenticationError, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parents[1]  # the repository
TESTDATA = ROOT / "testdata"
JPEG = (TESTDATA / "castle_image.jpg").read_bytes()
MB = 1024 * 1024


# --- files and processes ------------------------------------------------------------------------------


# A job whose worker died is found in seconds instead of about a minute: its heartbeat lasts 6 s, workers look
# every 2 s and an idle one wakes every 5 s (the defaults, 30, 15 and 30 s, run in tests/TestCompose.py).
QUICK_RECOVERY = {"JOB_HEARTBEAT_TTL": "6", "MAINTENANCE_INTERVAL": "2", "WORKER_TTL": "20"}


def run_command(argv, env=None, timeout=600, check=True, cwd=None) -> subprocess.CompletedProcess:
    """A command's outcome, its output captured; AssertionError with the output's end if it fails and check."""
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        said = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(map(str, argv))} exited {done.returncode}:\n{said}")
    return done


def copy_sample(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes((TESTDATA / name).read_bytes())
    return dest


def start_process(command: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **(env or {})}, **kwargs)


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


def start_redis_server(folder: Path, lines: list[str], *args: str) -> subprocess.Popen:
    """redis-server (or, with --sentinel, a sentinel) configured by `lines`, written to folder/redis.conf: a
    password there stays off every command line, and a sentinel can rewrite its file. Its log is
    folder/redis.log, its data folder is folder."""
    from imagejobs.embedded_redis import server_binary

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "redis.conf"
    config.touch(mode=0o600)  # it holds the password
    config.write_text("\n".join([*lines, f"dir {folder}", f"logfile {folder / 'redis.log'}", ""]))
    return subprocess.Popen([server_binary(), str(config), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_workers(count: int, timeout: float = 20) -> None:
    from rq import Worker

    from RedisConfig import connection

    deadline = time.monotonic() + timeout
    while Worker.count(connection=connection()) < count:
        assert time.monotonic() < deadline, f"{count} workers did not register within {timeout} s"
        time.sleep(0.05)


def decoded_sizes(monkeypatch) -> list:
    """The size of every image Pillow decodes from now on (after draft() has reduced it)."""
    sizes = []
    load_prepare = ImageFile.ImageFile.load_prepare

    def spy(self):
        sizes.append(self.size)
        load_prepare(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", spy)
    return sizes


# --- the API, through a Flask test client ----------------------------------------------------------------


def result_of(client, job_id: str) -> dict:
    """The finished (or failed) job's answer, waited for through the API's own wait."""
    answer = client.get(f"/result/{job_id}?wait=20")
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def submit(client, method: str, **kwargs):
    answer = client.open("/imageapi", method=method, **kwargs)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def rel(path: Path, images_root: Path) -> str:
    return path.relative_to(images_root).as_posix()


def jpeg_bytes(size=(640, 480), color="teal") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


# --- the whole service, as `python run.py` ------------------------------------------------------------------


class RunningService:
    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None):
        self.images = tmp_path / "images"
        self.images.mkdir(exist_ok=True)
        environment = {**os.environ, "IMAGES_DIR": str(self.images), "LOGS_DIR": str(tmp_path / "logs"), **(env or {})}
        if "REDIS_URL" not in (env or {}):
            environment.pop("REDIS_URL")  # run.py starts its own Redis
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = [line for line in self.lines if "ready at" in line]
            if ready:
                return ready[0].split("ready at ")[1].split()[0]
            assert self.process.poll() is None, f"run.py exited: {self.process.stderr.read()}"
            time.sleep(0.1)
        raise AssertionError("run.py printed no URL")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def interrupt(self) -> int:
        """Ctrl+C: the terminal sends SIGINT to run.py, the foreground process."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(15)


# --- local HTTP servers, for image URLs ------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """Routes by the path's first segment; see ROUTES."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers["Host"]))
        path, _, query = self.path.partition("?")
        route = ROUTES.get(path.split("/")[1], Handler.missing)
        try:
            route(self, path, unquote(query))
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as the test wanted
            self.close_connection = True

    def reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def image(self, path, query) -> None:  # /img/<any name>
        self.reply(200, JPEG, Content_Type="image/jpeg")

    def chunked(self, path, query) -> None:  # /chunked/<any name>: the JPEG with no Content-Length
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, len(JPEG), 10_000):
            self.write_chunk(JPEG[start : start + 10_000])
        self.write_chunk(b"")

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def text(self, path, query) -> None:
        self.reply(200, b"Just some notes, not a picture.\n", Content_Type="text/plain")

    def hop(self, path, query) -> None:  # /hop/N: N redirects, each status in turn, then the JPEG
        left = int(path.split("/")[2])
        if left == 0:
            return self.image(path, query)
        self.reply((301, 302, 303, 307, 308)[left % 5], Location=f"/hop/{left - 1}")

    def redirect(self, path, query) -> None:  # /redirect?<url>
        self.reply(302, Location=query)

    def big(self, path, query) -> None:  # an honest Content-Length of 10 MB
        self.send_response(200)
        self.send_header("Content-Length", str(10 * MB))
        self.end_headers()
        for _ in range(10 * MB // len(JPEG)):
            self.wfile.write(JPEG)

    def endless(self, path, query) -> None:  # chunked, no Content-Length, up to 1 GB
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(1024):
            self.write_chunk(bytes(MB))
            self.server.endless_sent += MB

    def drip(self, path, query) -> None:  # headers, then a byte of body every 50 ms
        self.send_response(200)
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        for byte in JPEG[:200]:
            self.wfile.write(bytes([byte]))
            time.sleep(0.05)

    def drip_headers(self, path, query) -> None:  # the headers themselves a byte every 50 ms
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
            self.wfile.write(bytes([byte]))
            time.sleep(0.05)

    def stall(self, path, query) -> None:  # headers, then silence
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        time.sleep(3)

    def short(self, path, query) -> None:  # promises 100,000 bytes, sends 10 and hangs up
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(JPEG[:10])
        self.close_connection = True

    def missing(self, path, query) -> None:
        self.reply(404, b"no such thing")


ROUTES = {
    "img": Handler.image,
    "chunked": Handler.chunked,
    "notes.txt": Handler.text,
    "hop": Handler.hop,
    "redirect": Handler.redirect,
    "big": Handler.big,
    "endless": Handler.endless,
    "drip": Handler.drip,
    "drip-headers": Handler.drip_headers,
    "stall": Handler.stall,
    "short": Handler.short,
}


class Server(NamedTuple):
    httpd: ThreadingHTTPServer
    host: str
    port: int
    scheme: str = "http"

    @property
    def authority(self) -> str:
        """host:port as in the URL and the Host header."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{f'{host}:{self.port}' if host else self.authority}{path}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(path, Host header) of every request the server got in this test."""
        return self.httpd.requests


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer's own server_bind asks getfqdn(), which could send a reverse DNS query.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def handle_error(self, request, client_address) -> None:
        pass  # a client the test made give up mid-answer


class LocalServer6(LocalServer):
    address_family = socket.AF_INET6


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def start_server(server_class, host: str, tls: ssl.SSLContext | None = None):
    httpd = server_class((host, 0), Handler)
    if tls:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.requests, httpd.endless_sent = [], 0
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield Server(httpd, host, httpd.server_address[1], "https" if tls else "http")
    httpd.shutdown()
    httpd.server_close()


def assert_redis_refuses_without_its_password(port: int) -> None:
    """The Redis on port answers no client without the password, nor one with a wrong one."""
    for password_tried in (None, "wrong"):
        client = Redis(
            host="127.0.0.1", port=port, password=password_tried, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises(AuthenticationError):
            client.ping()
        client.close()


def assert_apps_connect(env: dict, port: int, password_file: str) -> None:
    """An app given this environment (REDIS_URL naming the host redis:6379, REDIS_PASSWORD_FILE, read here
    from password_file, REQUIRE_REDIS_AUTH) reaches the Redis on port."""
    from imagejobs.config import Settings
    from RedisConfig import connect

    configured = Settings(
        redis_url=env["REDIS_URL"].replace("redis:6379", f"127.0.0.1:{port}"),
        redis_password_file=password_file,
        require_redis_auth=env["REQUIRE_REDIS_AUTH"],
    )
    redis = connect(configured)
    try:
        assert redis.ping() is True
    finally:
        redis.close()

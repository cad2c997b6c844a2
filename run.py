"""The whole service on one machine, without Docker:
`python run.py [--port 5000] [--workers N] [--no-classifier] [--dashboard]`.

With REDIS_URL unset it starts a private redis-server (AOF on, data under ./data, a password made for
this run), then the workers and the API, with the same commands the containers run. It prints the URL
once /health answers. Ctrl+C (or SIGTERM) stops everything: the API and the workers first (a worker
finishes its job if it can), Redis last; anything still alive after 10 s is killed.
"""

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from imagejobs import embedded_redis
from imagejobs.config import settings
from RedisConfig import RedisNotConfigured, redacted, redis_url

HERE = Path(__file__).resolve().parent
# The commands the containers run (docker-compose.yml); python is this interpreter.
API_COMMAND = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "RestAPI:app"]
WORKER_COMMAND = [sys.executable, "worker.py"]
DASHBOARD_PORT = 9181
STOP_GRACE = 8.0  # seconds the API and workers get to stop before they are killed; Redis gets the rest of 10


class CannotStart(Exception):
    """A one-line reason the service cannot start."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Run the image job service: Redis (unless REDIS_URL is set), workers and the API."
    )
    parser.add_argument("--port", type=int, default=settings.port, help="the API's port (default: PORT or 5000)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="size/resize workers (default: CPU cores)"
    )
    parser.add_argument("--no-classifier", action="store_true", help="do not start the classify worker")
    parser.add_argument(
        "--dashboard",
        type=int,
        nargs="?",
        const=DASHBOARD_PORT,
        metavar="PORT",
        help=f"also run rq-dashboard on 127.0.0.1 (default port {DASHBOARD_PORT})",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def check_images_folder() -> None:
    if not settings.images_dir.is_dir():
        raise CannotStart(
            f"the images folder {settings.images_dir} does not exist: "
            f"create it (mkdir {settings.images_dir}) or set IMAGES_DIR"
        )


def check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((settings.listen_host, port))
        except OSError as exc:
            raise CannotStart(
                f"port {port} on {settings.listen_host} is not free ({exc.strerror}): stop what uses it or pass --port"
            ) from None


class Child:
    """A process of the stack, with what it takes to start it again."""

    def __init__(self, name: str, command: list[str], env: dict, restart: bool):
        self.name, self.command, self.env, self.restart = name, command, env, restart
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, cwd=HERE, env=self.env, start_new_session=True)


class Stack:
    """The child processes, in start order; stopped in reverse, Redis last. A worker that dies is
    started again (its job is found abandoned and retried); the API or Redis dying stops everything."""

    def __init__(self):
        self.redis: subprocess.Popen | None = None
        self.children: list[Child] = []

    def start_redis(self) -> str:
        if settings.redis_url:
            try:
                embedded_redis.wait_until_up(redis_url(), timeout=3)
            except RedisNotConfigured as exc:
                raise CannotStart(str(exc)) from None
            except RuntimeError as exc:
                raise CannotStart(f"Redis at {redacted(settings.redis_url)} is unreachable: {exc}") from None
            return settings.redis_url
        password, port = secrets.token_urlsafe(24), embedded_redis.free_port()
        self.redis = embedded_redis.start(Path("data").resolve(), port, password)
        url = embedded_redis.url(port, password)
        try:
            embedded_redis.wait_until_up(url, self.redis)
        except RuntimeError as exc:
            raise CannotStart(f"the embedded Redis did not start: {exc}") from None
        return url

    def spawn(self, name: str, command: list[str], env: dict, restart: bool = False) -> None:
        self.children.append(Child(name, command, env, restart))

    def exited(self, restart: bool) -> str | None:
        """The name of a child that has exited for good, if any. With restart, a dead worker is started
        again instead (not during start-up, where a worker that dies at once would only die again)."""
        for child in self.children:
            code = child.process.poll()
            if code is None:
                continue
            if not (restart and child.restart):
                return f"{child.name} (exit code {code})"
            print(f"run.py: {child.name} exited (code {code}); starting it again", file=sys.stderr, flush=True)
            child.process = child.start()
        if self.redis is not None and self.redis.poll() is not None:
            return "redis-server"
        return None

    def stop(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not cut the shutdown short
        deadline = time.monotonic() + STOP_GRACE
        processes = [child.process for child in reversed(self.children)]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()  # redis-server flushes its AOF on SIGTERM
            try:
                self.redis.wait(2)
            except subprocess.TimeoutExpired:
                self.redis.kill()


def wait_for_health(stack: Stack, url: str, workers: int, timeout: float = 60) -> None:
    """Return once /health answers and counts every worker: then the service is ready for work."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = stack.exited(restart=False)
        if dead:
            raise CannotStart(f"{dead} exited during start-up; its log is in {settings.logs_dir}")
        try:
            with urllib.request.urlopen(url + "health", timeout=1) as answer:
                if json.load(answer).get("workers", 0) >= workers:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise CannotStart(
        f"the API did not answer {url}health with {workers} workers within {timeout:.0f} s; see {settings.logs_dir}"
    )


def serve(args, stack: Stack) -> int:
    check_images_folder()
    check_port_free(args.port)
    env = {
        **os.environ,
        "REDIS_URL": stack.start_redis(),
        "PORT": str(args.port),
        "IMAGES_DIR": str(settings.images_root),
        "LOGS_DIR": str(settings.logs_dir.resolve()),
    }
    for number in range(args.workers):
        stack.spawn(f"worker {number + 1}", WORKER_COMMAND + ["images"], env, restart=True)
    if not args.no_classifier:
        stack.spawn("classifier", WORKER_COMMAND + ["classify"], env, restart=True)
    stack.spawn("api", API_COMMAND, env)
    if args.dashboard:  # the Redis URL goes by environment, not on a command line anyone can read
        stack.spawn(
            "rq-dashboard",
            [sys.executable, "-m", "rq_dashboard", "--bind", "127.0.0.1", "--port", str(args.dashboard)],
            {**env, "RQ_DASHBOARD_REDIS_URL": env["REDIS_URL"]},
        )
    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::") else settings.listen_host
    url = f"http://{host}:{args.port}/"
    wait_for_health(stack, url, args.workers + (not args.no_classifier))
    print(f"Image service ready at {url} ({args.workers} workers); Ctrl+C stops it.", flush=True)
    if args.dashboard:
        print(f"rq-dashboard at http://127.0.0.1:{args.dashboard}/", flush=True)
    while not (dead := stack.exited(restart=True)):
        time.sleep(0.5)
    raise CannotStart(f"{dead} stopped unexpectedly; the service is shutting down")


def main(argv=None) -> int:
    args = parse_args(argv)
    stack = Stack()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # even when started in the background, where SIGINT is ignored
    try:
        return serve(args, stack)
    except CannotStart as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())

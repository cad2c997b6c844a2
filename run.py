"""The whole service on one machine, without Docker:
`python run.py [--port 5000] [--workers N] [--no-classifier]`.

With REDIS_URL unset it starts a private redis-server (AOF on, data under ./data, a password made for
this run), then the workers and the API, with the same commands the containers run. It prints the URL
once /health answers. Ctrl+C (or SIGTERM) stops everything: the API and the workers first (a worker
finishes its job if it can), Redis last; anything still alive after 10 s is killed.

A worker that dies is started again. So is the private redis-server, from its AOF, on the same port with
the same password, after 0.5 s, then 1, 2, 4... (at most 10 s) while it keeps dying; the workers and the
API reconnect on their own. After REDIS_RESTARTS restarts in a row that fail, run.py gives up and stops.
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
STOP_GRACE = 8.0  # seconds the API and workers get to stop before they are killed; Redis gets the rest of 10
POLL = 0.25  # seconds between looks at the children
REDIS_RESTARTS = 8  # restarts of the private Redis in a row that fail before run.py gives up (45.5 s of back-off)
REDIS_FIRST_DELAY = 0.5  # seconds before the first restart; each next one waits twice as long, up to
# REDIS_RESTART_MAX_DELAY (a setting: the default 10 s gives 0.5, 1, 2, 4, 8, 10, 10, 10)
REDIS_STABLE = 30.0  # seconds a restarted Redis must stay up before its next death counts from attempt 1 again
REDIS_LOAD_TIMEOUT = 60.0  # seconds a restarted Redis may take to load its AOF and answer


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
    """CannotStart unless the API could listen on port. SO_REUSEADDR as gunicorn sets it: connections of a
    previous run in TIME_WAIT do not make the port taken; a listening socket still does."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def say(message: str) -> None:
    print(f"run.py: {message}", file=sys.stderr, flush=True)


def restart_delay(attempt: int) -> float:
    """The back-off before restart number `attempt` (from 1) of a run: 0.5 s, 1, 2, 4, ... up to
    REDIS_RESTART_MAX_DELAY."""
    return min(REDIS_FIRST_DELAY * 2 ** (attempt - 1), settings.redis_restart_max_delay)


class Stack:
    """The child processes, in start order; stopped in reverse, Redis last. A worker that dies is
    started again (its job is found abandoned and retried), so is the private Redis (from its AOF);
    the API dying, or the private Redis failing to come back, stops everything."""

    def __init__(self):
        self.redis: embedded_redis.EmbeddedRedis | None = None
        self.children: list[Child] = []
        self.redis_attempts = 0  # restarts of the private Redis in a row, none of which stayed up REDIS_STABLE
        self.redis_up_since = 0.0

    def started(self) -> bool:
        return self.redis is not None or bool(self.children)

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
        self.redis = embedded_redis.EmbeddedRedis(Path("data").resolve(), port, password)
        self.redis.start()
        try:
            self.redis.wait_until_up()
        except RuntimeError as exc:
            raise CannotStart(f"the embedded Redis did not start: {exc}") from None
        self.redis_up_since = time.monotonic()
        return self.redis.url

    def restart_redis(self, how: str) -> None:
        """Start the private Redis again after it exited (`how`: "signal 9"), from its AOF, on its port with
        its password, after a back-off; keep at it while it fails to come back. CannotStart after
        REDIS_RESTARTS restarts in a row have failed. Blocks meanwhile: nothing works without Redis, and a
        worker started again now would only fail to connect."""
        died = time.monotonic()
        if died - self.redis_up_since >= REDIS_STABLE:
            self.redis_attempts = 0
        reason = f"redis-server exited ({how})"
        while True:
            self.redis_attempts += 1
            if self.redis_attempts > REDIS_RESTARTS:
                raise CannotStart(
                    f"{reason}, and {REDIS_RESTARTS} restarts in a row have failed (its log: "
                    f"{self.redis.data_dir / 'redis.log'}); giving up, the service is shutting down"
                )
            delay = restart_delay(self.redis_attempts)
            say(f"{reason}; restarting it from its AOF (attempt {self.redis_attempts}, in {delay:g} s)")
            time.sleep(delay)
            self.redis.start()
            try:
                self.redis.wait_until_up(REDIS_LOAD_TIMEOUT)
            except RuntimeError as exc:
                reason = f"redis-server did not come back ({exc})"
                continue
            self.redis_up_since = time.monotonic()
            say(
                f"redis-server is back on port {self.redis.port}, {self.redis_up_since - died:.1f} s after it "
                "exited; the workers and the API reconnect on their own"
            )
            return

    def spawn(self, name: str, command: list[str], env: dict, restart: bool = False) -> None:
        self.children.append(Child(name, command, env, restart))

    def exited(self, restart: bool) -> str | None:
        """The name of a child that has exited for good, if any. With restart, a dead worker or the private
        Redis is started again instead (not during start-up, where what dies at once would only die again).
        Redis first: a worker started while it is down would only fail to connect."""
        how = self.redis.exited() if self.redis is not None else None
        if how:
            if not restart:
                return f"redis-server ({how})"
            self.restart_redis(how)
        for child in self.children:
            code = child.process.poll()
            if code is None:
                continue
            if not (restart and child.restart):
                return f"{child.name} (exit code {code})"
            say(f"{child.name} exited (code {code}); starting it again")
            child.process = child.start()
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
        if self.redis is not None:
            self.redis.stop(2)  # redis-server flushes its AOF on SIGTERM


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
    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "::") else settings.listen_host
    url = f"http://{host}:{args.port}/"
    wait_for_health(stack, url, args.workers + (not args.no_classifier))
    print(f"Image service ready at {url} ({args.workers} workers); Ctrl+C stops it.", flush=True)
    while not (dead := stack.exited(restart=True)):
        time.sleep(POLL)
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
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if stack.started():  # not after a one-line refusal, where nothing had started
            stack.stop()
            print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())

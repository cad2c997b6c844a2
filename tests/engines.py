"""The container engines tests/TestCompose.py runs the stack on: Docker (dockerd, with Docker Compose v2 as
`docker compose`, the README's spelling) and podman (with podman-compose). Each is used as it runs here,
or started here when it can be (dockerd as root, with folders of its own), and stopped again afterwards.

Where the base images cannot be pulled (no registry: an air-gapped CI, like this project's own), stand-ins
are imported under their names first (deploy/offline/base_images.py), so the Dockerfile and the compose file
are used unchanged. ../shared facts this follows: podman 4.3 needs runc here (crun 1.8 refuses this
kernel's hybrid cgroups), a nofile limit it can set, BUILDAH_FORMAT=docker (the OCI format drops
HEALTHCHECK), and, with no systemd, someone to run the healthchecks: `podman healthcheck run` from a loop.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "offline"))
import base_images  # noqa: E402  (a script of deploy/, not a package)

from tests.support import run_command as run  # noqa: E402

# As root, each engine keeps the tests' images and build cache here, apart from the machine's own, between runs.
STATE = Path("/var/lib/imageresize-tests")
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
{runtime}
[network]
network_backend = "netavark"
"""
PODMAN_STORAGE = """[storage]
driver = "overlay"
graphroot = "{state}/podman"
runroot = "{scratch}/podman-run"
"""
HEALTHCHECK_EVERY = 3  # seconds between the podman healthcheck loop's rounds


class Unavailable(Exception):
    """Why this engine cannot be had here, in one sentence."""


class Engine:
    """One engine and its compose tool; `env` is the environment their commands need."""

    name = ""
    label = "com.docker.compose.project"  # both compose tools label their containers with it

    def __init__(self):
        self.env = dict(os.environ)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"engine-{self.name}-"))

    def start(self) -> None:
        """Make the engine usable, or raise Unavailable."""
        raise NotImplementedError

    def stop(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def compose_command(self) -> list[str]:
        raise NotImplementedError

    def run(self, *args, timeout=600, check=True) -> subprocess.CompletedProcess:
        return run([self.name, *args], env=self.env, timeout=timeout, check=check)

    def import_base_images(self) -> list[str]:
        return base_images.ensure(self.name, self.scratch / "base-images", self.env)

    def containers(self, project: str, service: str | None = None, every=False) -> list[str]:
        """The names of a compose project's containers (of one service), running ones only unless every."""
        filters = ["--filter", f"label={self.label}={project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        listed = self.run("ps", *(["-a"] if every else []), *filters, "--format", "{{.Names}}").stdout
        return sorted(listed.split())

    def inspect(self, container: str) -> dict:
        return json.loads(self.run("inspect", container).stdout)[0]

    def watch_health(self, project: str) -> None:
        """Have the containers' healthchecks run (the engine does it itself, but for podman without systemd)."""

    def unwatch_health(self) -> None:
        pass


class Docker(Engine):
    name = "docker"

    def __init__(self):
        super().__init__()
        self.daemon = None

    def start(self) -> None:
        if not shutil.which("docker"):
            raise Unavailable("the docker client is not installed (Debian: apt-get install docker.io)")
        if self.run("info", check=False, timeout=30).returncode != 0:
            self.start_daemon()
        compose = self.run("compose", "version", check=False, timeout=30)
        if compose.returncode != 0:
            raise Unavailable(
                "Docker Compose v2 (`docker compose`) is not installed: .ci/run shows where it comes from"
            )

    def start_daemon(self) -> None:
        """dockerd as root, with a data root, exec root, pid file and socket of its own."""
        if not shutil.which("dockerd"):
            raise Unavailable("no Docker daemon answers and dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise Unavailable("no Docker daemon answers, and starting dockerd needs root")
        (STATE / "docker").mkdir(parents=True, exist_ok=True)
        socket = self.scratch / "docker.sock"
        argv = ["dockerd", "--data-root", str(STATE / "docker"), "--exec-root", str(self.scratch / "exec")]
        argv += ["--pidfile", str(self.scratch / "docker.pid"), "-H", f"unix://{socket}"]
        log = (self.scratch / "dockerd.log").open("wb")
        self.daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.env["DOCKER_HOST"] = f"unix://{socket}"
        deadline = time.monotonic() + 60
        while self.run("info", check=False, timeout=30).returncode != 0:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                said = (self.scratch / "dockerd.log").read_text(errors="replace")[-800:]
                raise Unavailable(f"dockerd did not start: {said}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.daemon is not None:
            self.run("image", "prune", "--force", check=False)  # the last builds' leftovers, in its own data root
            self.daemon.terminate()
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        super().stop()

    def compose_command(self) -> list[str]:
        return ["docker", "compose"]


class Podman(Engine):
    name = "podman"

    def __init__(self):
        super().__init__()
        self.watching = threading.Event()
        self.watcher = None
        self.own_storage = None

    def start(self) -> None:
        if not shutil.which("podman"):
            raise Unavailable("podman is not installed (Debian: apt-get install podman runc netavark aardvark-dns)")
        if not shutil.which("podman-compose"):
            raise Unavailable("podman-compose is not installed (it is in requirements-dev.txt)")
        conf = self.scratch / "containers.conf"
        runtime = 'runtime = "runc"' if shutil.which("runc") else ""
        conf.write_text(PODMAN_CONF.format(runtime=runtime))
        self.env.update(CONTAINERS_CONF=str(conf), BUILDAH_FORMAT="docker")
        if os.geteuid() == 0:
            self.own_storage = self.scratch / "storage.conf"
            self.own_storage.write_text(PODMAN_STORAGE.format(state=STATE, scratch=self.scratch))
            self.env["CONTAINERS_STORAGE_CONF"] = str(self.own_storage)
        info = self.run("info", check=False, timeout=60)
        if info.returncode != 0:
            raise Unavailable(f"podman does not run here: {info.stderr.strip()[-300:]}")

    def stop(self) -> None:
        if self.own_storage is not None:
            self.run("image", "prune", "--force", check=False, timeout=300)  # the last builds' leftovers
        super().stop()

    def compose_command(self) -> list[str]:
        return ["podman-compose"]

    def watch_health(self, project: str) -> None:
        def loop():
            while not self.watching.wait(HEALTHCHECK_EVERY):
                for container in self.containers(project):
                    self.run("healthcheck", "run", container, check=False, timeout=60)

        self.watching.clear()
        self.watcher = threading.Thread(target=loop, name="podman-healthchecks", daemon=True)
        self.watcher.start()

    def unwatch_health(self) -> None:
        self.watching.set()
        if self.watcher is not None:
            self.watcher.join(90)


ENGINES = {"docker": Docker, "podman": Podman}

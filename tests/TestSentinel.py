"""Redis under Sentinel, with real processes: a primary, a replica and three sentinels (redis-server
--sentinel), all on free ports on 127.0.0.1 with a password. The whole service runs as `python run.py`
(its check, the gunicorn API, two `python worker.py images`) with REDIS_SENTINELS and no REDIS_URL.
The primary is killed (SIGKILL) mid-batch; the sentinels promote the replica, and every process finds
the new master by itself."""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from redis import Redis
from redis.exceptions import ConnectionError, TimeoutError

from imagejobs.config import Settings
from imagejobs.embedded_redis import exit_reason, free_port
from RedisConfig import connect, redis_url
from tests.support import QUICK_RECOVERY, ROOT, RunningService, start_redis_server
from tests.TestFaults import SLOW, photo_folder, progress, result, wait_until, workers_of

MASTER = "imagejobs"  # not the default "mymaster": REDIS_SENTINEL_MASTER is used


class SentinelGroup:
    """A primary, a replica of it and `sentinels` sentinels monitoring it (quorum `quorum`), each a
    redis-server with its config file (passwords included: never on a command line) in folder. The
    sentinels' own password: Redis's ("shared"), another one ("own"), or none ("none")."""

    def __init__(self, folder: Path, sentinel_auth: str = "shared", sentinels: int = 3, quorum: int = 2):
        self.folder, self.password = folder, secrets.token_hex(16)
        self.sentinel_password = {"shared": self.password, "own": secrets.token_hex(16), "none": None}[sentinel_auth]
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.processes: dict[str, subprocess.Popen] = {}
        common = [
            "bind 127.0.0.1",
            f"requirepass {self.password}",
            f"masterauth {self.password}",
            'save ""',
            "appendonly no",
            "stream-node-max-bytes 512",
        ]
        self.start("primary", [f"port {self.primary_port}", *common])
        self.start("replica", [f"port {self.replica_port}", *common, f"replicaof 127.0.0.1 {self.primary_port}"])
        for number, port in enumerate(self.sentinel_ports):
            self.start(
                f"sentinel{number}",
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} {quorum}",
                    f"sentinel auth-pass {MASTER} {self.password}",  # the sentinels to the primary and replica
                    *(  # the clients (the service) to the sentinels, and the sentinels to each other
                        [f"requirepass {self.sentinel_password}", f"sentinel sentinel-pass {self.sentinel_password}"]
                        if self.sentinel_password
                        else []
                    ),
                    f"sentinel down-after-milliseconds {MASTER} 1000",
                    f"sentinel failover-timeout {MASTER} 5000",
                ],
                "--sentinel",
            )

    def start(self, name: str, lines: list[str], *args: str) -> None:
        self.processes[name] = start_redis_server(self.folder / name, lines, *args)

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def client(self, port: int) -> Redis:
        password = self.sentinel_password if port in self.sentinel_ports else self.password
        return Redis("127.0.0.1", port, password=password, socket_connect_timeout=1, socket_timeout=2)

    def master_port(self, sentinel: int = 0) -> int | None:
        """The master's port as sentinel number `sentinel` names it now."""
        with self.client(self.sentinel_ports[sentinel]) as client:
            address = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        return int(address[1]) if address else None

    def ready(self) -> bool:
        """The replica is in sync and every sentinel knows it and the other sentinels: a failover can happen."""
        for name, process in self.processes.items():
            assert process.poll() is None, f"{name} exited ({exit_reason(process)}): {self.log(name)}"
        try:
            with self.client(self.replica_port) as replica:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            for port in self.sentinel_ports:
                with self.client(port) as sentinel:
                    state = sentinel.sentinel_master(MASTER)
                    if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                        return False
        except (ConnectionError, TimeoutError):
            return False
        return True

    def log(self, name: str) -> str:
        path = self.folder / name / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def group(tmp_path, request):
    started = SentinelGroup(tmp_path / "redis", getattr(request, "param", "shared"))
    try:
        wait_until(started.ready, 30, "the replica or the sentinels never got ready")
        yield started
    finally:
        started.stop()


def sentinel_env(group: SentinelGroup, tmp_path: Path) -> dict:
    """The service's settings for this group: the sentinels, the master's name, the password in a file as
    compose gives it, no REDIS_URL; REDIS_SENTINEL_PASSWORD only when the sentinels' password is not Redis's."""
    password_file = tmp_path / "redis-password"
    password_file.write_text(group.password + "\n")
    env = {
        "REDIS_SENTINELS": group.sentinels,
        "REDIS_SENTINEL_MASTER": MASTER,
        "REDIS_PASSWORD_FILE": str(password_file),
        "REQUIRE_REDIS_AUTH": "true",
    }
    if group.sentinel_password != group.password:
        env["REDIS_SENTINEL_PASSWORD"] = group.sentinel_password or ""  # empty: the sentinels ask for none
    return env


@pytest.mark.parametrize("group", ["shared", "own", "none"], indirect=True)
def test_the_client_follows_a_failover_and_redis_url_names_the_master(group, tmp_path):
    env = sentinel_env(group, tmp_path)
    configured = Settings(redis_url=None, **{name.lower(): value for name, value in env.items()})
    assert configured.redis_url == f"redis://{MASTER}/0"  # REDIS_URL unset: the sentinels give the host
    assert redis_url(configured).endswith(f"@127.0.0.1:{group.primary_port}/0")
    client = connect(configured)
    client.set("before", "1")
    assert client.wait(1, 5000) == 1  # on the replica too, before the kill (replication is asynchronous)
    assert client.connection_pool.get_master_address() == ("127.0.0.1", group.primary_port)
    group.processes["primary"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: group.master_port() == group.replica_port, 30, "the replica was never promoted")
    client.set("after", "1")  # the same client, once the sentinels name the new master
    assert client.connection_pool.get_master_address() == ("127.0.0.1", group.replica_port)
    assert client.get("before") == b"1"
    assert redis_url(configured).endswith(f"@127.0.0.1:{group.replica_port}/0")
    client.close()
    print(f"\nsentinel: promotion {time.monotonic() - killed:.1f} s after the primary was killed")


def test_a_primary_killed_mid_batch_is_replaced_and_the_batch_loses_nothing(group, tmp_path):
    service = RunningService(
        tmp_path,
        "--no-classifier",
        "--workers",
        "2",
        "--port",
        str(free_port()),
        env={**sentinel_env(group, tmp_path), **QUICK_RECOVERY, "CHUNK_SIZE": "2"},
    )
    try:
        url = service.url()  # run.py's check asked the sentinels for the master, and the workers registered
        workers = {process.pid for process in workers_of(service)}
        assert len(workers) == 2
        count = 12
        folder = photo_folder(service.images, "failover", count)
        job_id = requests.post(url + "imageapi", data={"imagePath": folder, **SLOW}, timeout=10).json()["jobId"]
        wait_until(lambda: progress(url, job_id).get("done", 0) >= 1, 60, "the batch never started")
        # Replication is asynchronous: a write the primary acknowledged just before it died may never have
        # reached the replica. The submission is seconds old by now, and a second more lets the latest
        # entries reach it too; what the replica still misses is redone (a chunk left "started" is found
        # abandoned and retried, and its entries are rewritten by index).
        time.sleep(1)
        before = progress(url, job_id)
        group.processes["primary"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: group.master_port() == group.replica_port, 30, "the replica was never promoted")
        promoted = time.monotonic() - killed
        done = result(url, job_id, within=150)
        ended = time.monotonic() - killed

        entries = done["result"]["images"]
        lost = [entry["image"] for entry in entries if "result" not in entry]
        print(
            f"\nsentinel failover: {before['done']} of {count} images done at the kill; the replica promoted "
            f"{promoted:.1f} s after it, the batch ended {ended:.1f} s after it; images lost: {len(lost)}"
        )
        assert done["status"] == "finished", done
        assert lost == [] and (done["result"]["done"], done["result"]["failed"]) == (count, 0), done["result"]
        # Each image exactly once: one entry per index, in order (a re-run chunk rewrote its own entries).
        assert [entry["image"] for entry in entries] == [f"{folder}/p{index:02d}.jpg" for index in range(count)]
        for index in range(count):
            assert (service.images / "resized" / folder / f"p{index:02d}_resized.png").is_file()

        # The same two worker processes, reconnected to the new master (not dead and started again by run.py).
        assert {process.pid for process in workers_of(service)} == workers
        health = requests.get(url + "health", timeout=10).json()
        assert health["redis"] == "ok" and health["workers"] == 2, health
        with group.client(group.replica_port) as master:
            assert master.info("replication")["role"] == "master"
            registered = {int(pid) for key in master.smembers("rq:workers") if (pid := master.hget(key, "pid"))}
        assert registered == workers
        assert service.interrupt() == 0
    finally:
        if service.process.poll() is None:
            service.interrupt()


def test_a_malformed_sentinel_list_stops_a_worker_with_the_reason(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("REDIS_")}
    env.update(REDIS_SENTINELS="127.0.0.1:26379,sentinel-without-port", LOGS_DIR=str(tmp_path / "logs"))
    done = subprocess.run(
        [sys.executable, "worker.py", "images"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "worker: REDIS_SENTINELS: 'sentinel-without-port' is not host:port" in done.stderr, done.stderr


def test_run_py_refuses_to_start_when_no_sentinel_names_a_master(tmp_path):
    nobody = free_port()
    service = RunningService(
        tmp_path, "--no-classifier", "--port", str(free_port()), env={"REDIS_SENTINELS": f"127.0.0.1:{nobody}"}
    )
    assert service.process.wait(30) == 1
    said = service.process.stderr.read()
    assert f"Redis at redis://mymaster/0 is unreachable: no sentinel of REDIS_SENTINELS (127.0.0.1:{nobody})" in said
    assert not (tmp_path / "data").exists()  # it started no Redis of its own

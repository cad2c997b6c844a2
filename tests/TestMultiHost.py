"""Several hosts on one Redis, with real processes on a real (virtual) network: three network namespaces
stand for three machines, each joined by a veth pair to a bridge in the test's own (root) namespace,
addressed in a private /24 used by nothing else. Redis listens on the bridge's address; each "host" runs
`python worker.py images` exactly as the container does, with REDIS_URL pointing across its link; the
images folder is the same directory for all of them (as an NFS / ReadWriteMany volume would be).

A 1,000-image folder batch drains across the three hosts; mid-batch one host's link is cut: its running
chunk is found abandoned (its heartbeat stops; the workers run with tests/support.py's QUICK_RECOVERY, so in
seconds rather than about a minute) and retried on another host, the batch ends with every
image once; the link comes back and the host's worker takes work again (the same process, reconnected, or
after about a minute cut off, a new one: RQ quits on a Redis error outside a job, and the container's restart
policy, here the test, starts it again).

Needs root and `ip netns`; skipped otherwise. Namespaces, links and processes are removed on the way out,
whatever happened. Traffic stays on this machine: the namespaces have no default route and no other
route than the test's /24, and the root namespace gains only the bridge's route to that /24."""

import errno
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from rq import Worker

from imagejobs.api import create_app
from imagejobs.config import Settings, settings
from imagejobs.embedded_redis import free_port, url, wait_until_up
from RedisConfig import connect
from tests.support import QUICK_RECOVERY, ROOT, jpeg_bytes, start_redis_server, stop_processes

HOSTS = 3
IMAGES = 1000
# About 30 ms of CPU an image (a 64x48 JPEG stretched to 1200x1200 and encoded): 1,000 images take
# ~15 s on 3 workers sharing 2 cores.
HEAVY = {"width": "1200", "height": "1200", "fit": "stretch", "format": "jpeg"}
CHUNK_LINE = r"resize chunk (\d+) of batch {batch}: (\d+) images"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def netns_unavailable() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces, veth pairs and a bridge"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (ip netns)"
    probe = f"imagejobs-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is not available here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def free_subnet() -> str:
    """A 10.231.N.0/24 no address or route of this machine touches: e.g. 10.231.7 (the first three octets)."""
    used = ip("-4", "-o", "addr").stdout + ip("-4", "route", "show", "table", "all").stdout
    for third in [7, *range(8, 255)]:
        if f"10.231.{third}." not in used:
            return f"10.231.{third}"
    raise AssertionError("no free 10.231.N.0/24 here")


class Network:
    """A bridge in the root namespace (prefix.1) and HOSTS namespaces, each with one veth pair to it
    (prefix.11, .12, ...). Names are unique to this run; remove() takes away whatever was made."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.prefix = free_subnet()
        self.address = f"{self.prefix}.1"
        self.bridge = f"ijbr{tag}"
        self.namespaces = [f"imagejobs-{tag}-host{number}" for number in range(1, HOSTS + 1)]
        self.links = [f"ij{tag}h{number}" for number in range(1, HOSTS + 1)]  # the host (root) side of each
        self.made: list[tuple[str, str]] = []

    def create(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self.made.append(("link", self.bridge))
        no_ipv6(self.bridge)
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for number, (namespace, link) in enumerate(zip(self.namespaces, self.links), start=11):
            ip("netns", "add", namespace)
            self.made.append(("netns", namespace))
            ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self.made.append(("link", link))
            no_ipv6(link)
            ip("link", "set", link, "master", self.bridge)
            ip("link", "set", link, "up")
            inside = ["-n", namespace]
            switch = "/proc/sys/net/ipv6/conf/all/disable_ipv6"  # IPv6 off in there (if the machine has it)
            ip("netns", "exec", namespace, "sh", "-c", f"[ ! -e {switch} ] || echo 1 > {switch}")
            ip(*inside, "addr", "add", f"{self.prefix}.{number}/24", "dev", "eth0")
            ip(*inside, "link", "set", "lo", "up")
            ip(*inside, "link", "set", "eth0", "up")

    def remove(self) -> None:
        for kind, name in reversed(self.made):
            if kind == "netns":
                ip("netns", "del", name, check=False)  # its end of the veth goes with it, and so the pair
            else:
                ip("link", "del", name, check=False)  # already gone with its namespace: no matter

    def cut(self, host: int) -> None:
        ip("link", "set", self.links[host], "down")

    def mend(self, host: int) -> None:
        ip("link", "set", self.links[host], "up")


def no_ipv6(link: str) -> None:
    switch = Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
    if switch.exists():  # else IPv6 is off on this machine anyway
        switch.write_text("1")


def assert_nothing_leaves(network: Network, routes_before: str) -> None:
    """The namespaces can reach the test's /24 and nothing else; the root namespace's routes are as they
    were but for the bridge's /24 (its default route untouched)."""
    for namespace in network.namespaces:
        routes = ip("-n", namespace, "-4", "route", "show", "table", "all").stdout
        assert "default" not in routes, routes
        main = ip("-n", namespace, "-4", "route").stdout.splitlines()
        assert len(main) == 1 and main[0].startswith(f"{network.prefix}.0/24 dev eth0"), main
        assert ip("-n", namespace, "-6", "route").stdout.strip() == ""  # IPv6 is off in there
        probe = subprocess.run(  # an address outside the /24 (TEST-NET-2): refused before any packet is sent
            ["ip", "netns", "exec", namespace, sys.executable, "-c", CONNECT_OUT],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert probe.stdout.strip() == str(errno.ENETUNREACH), (probe.stdout, probe.stderr)
    added = set(ip("-4", "route").stdout.splitlines()) - set(routes_before.splitlines())
    assert [line.split()[:3] for line in added] == [[f"{network.prefix}.0/24", "dev", network.bridge]], added
    assert ip("-4", "route", "show", "default").stdout == default_route(routes_before)


CONNECT_OUT = """
import socket
try:
    socket.create_connection(("198.51.100.1", 9), timeout=2)
    print("connected")
except OSError as exc:
    print(exc.errno)
"""


def default_route(routes: str) -> str:
    return "".join(line + "\n" for line in routes.splitlines() if line.startswith("default"))


class Cluster:
    """The network, a Redis on the bridge's address (and 127.0.0.1), a worker in each namespace, and the API
    (a Flask test client in this process, on 127.0.0.1)."""

    def __init__(self, tmp_path: Path, network: Network):
        self.network, self.tmp = network, tmp_path
        self.images = tmp_path / "images"  # the shared volume: one directory, seen by every namespace
        self.images.mkdir()
        self.password, self.port = secrets.token_hex(16), free_port()
        self.redis = start_redis_server(
            tmp_path / "redis",
            [
                f"port {self.port}",
                f"bind {network.address} 127.0.0.1",
                f"requirepass {self.password}",
                'save ""',
                "appendonly no",
                "stream-node-max-bytes 512",
            ],
        )
        self.local_url = url(self.port, self.password)
        wait_until_up(self.local_url, self.redis, timeout=20)
        self.remote_url = f"redis://:{self.password}@{network.address}:{self.port}/0"
        self.configured = Settings(
            **{
                **settings.model_dump(),
                "redis_url": self.local_url,
                "images_dir": self.images,
                "logs_dir": tmp_path / "logs-api",
            }
        )
        self.client = connect(self.configured)
        self.api = create_app(self.configured).test_client()
        self.workers: list[subprocess.Popen] = []

    def logs(self, host: int) -> Path:
        return self.tmp / f"logs-host{host + 1}"

    def start_workers(self) -> None:
        self.workers = [self.start_worker(host) for host in range(HOSTS)]

    def start_worker(self, host: int) -> subprocess.Popen:
        """`python worker.py images` in the host's namespace, as its container runs it, with REDIS_URL across
        the link. `ip netns exec` execs the command: the pid is the worker's own."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("REDIS_")}
        return subprocess.Popen(
            ["ip", "netns", "exec", self.network.namespaces[host], sys.executable, "worker.py", "images"],
            cwd=ROOT,
            env={
                **env,
                **QUICK_RECOVERY,
                "REDIS_URL": self.remote_url,
                "IMAGES_DIR": str(self.images),
                "LOGS_DIR": str(self.logs(host)),
            },
            stdout=subprocess.DEVNULL,
        )

    def waiting_from(self, host: int) -> bool:
        """Whether a worker of this host waits for work now: RQ's blocking dequeue (BLMOVE), over its own link.
        The callback couriers' BLPOP is not work: they reconnect at once after a cut, while the worker's
        own connection may resume only with TCP's next retransmission, tens of seconds later."""
        address = f"{self.network.prefix}.{11 + host}:"
        return any(
            client["addr"].startswith(address) and client["cmd"] == "blmove" for client in self.client.client_list()
        )

    def registered(self) -> dict[int, Worker]:
        """The workers Redis knows, by pid."""
        return {worker.pid: worker for worker in Worker.all(connection=self.client)}

    def chunks(self, host: int, batch: str) -> list[tuple[int, int]]:
        """(chunk, images) of each chunk of the batch this host's worker finished, from its log."""
        text = "".join(path.read_text() for path in self.logs(host).glob("worker-*.log"))
        return [(int(chunk), int(count)) for chunk, count in re.findall(CHUNK_LINE.format(batch=batch), text)]

    def log_lines(self, host: int, needle: str) -> list[str]:
        text = "".join(path.read_text() for path in self.logs(host).glob("worker-*.log"))
        return [line for line in text.splitlines() if needle in line]

    def submit(self, folder: str) -> str:
        answer = self.api.post("/imageapi", data={"imagePath": folder, **HEAVY})
        assert answer.status_code == 202, answer.get_json()
        return answer.get_json()["jobId"]

    def progress(self, job_id: str) -> dict:
        return self.api.get(f"/result/{job_id}").get_json().get("progress") or {}

    def result(self, job_id: str, within: float) -> dict:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            answer = self.api.get(f"/result/{job_id}?wait=10")
            if answer.status_code == 200:
                return answer.get_json()
        raise AssertionError(f"job {job_id} did not end within {within} s: {self.progress(job_id)}")

    def stop(self) -> None:
        stop_processes(self.workers, timeout=5)
        self.client.close()
        if self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(5)


@pytest.fixture
def cluster(tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    routes_before = ip("-4", "route").stdout
    network = Network()
    started = None
    try:
        network.create()
        assert_nothing_leaves(network, routes_before)
        started = Cluster(tmp_path, network)
        started.start_workers()
        yield started
    finally:
        if started is not None:
            started.stop()
        network.remove()
    assert not [name for name in network.namespaces if name in ip("netns", "list").stdout]
    assert network.bridge not in ip("-o", "link").stdout


def wait_until(condition, within: float, what: str):
    deadline = time.monotonic() + within
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def when(line: str) -> float:
    """The epoch time of a log line (its first field, an ISO UTC time)."""
    return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


def folder_of(images: Path, name: str, count: int) -> str:
    """count hard links of one small JPEG: a big folder at no cost of disk."""
    (images / name).mkdir()
    source = images / f"{name}-source.jpg"
    source.write_bytes(jpeg_bytes((64, 48)))
    for index in range(count):
        os.link(source, images / name / f"p{index:04d}.jpg")
    return name


def test_three_hosts_share_a_batch_and_a_cut_host_loses_nothing(cluster):
    network = cluster.network
    wait_until(lambda: len(cluster.registered()) == HOSTS, 30, "the workers never all registered")
    workers = [process.pid for process in cluster.workers]
    assert set(cluster.registered()) == set(workers)
    for pid, namespace in zip(workers, network.namespaces):  # each worker runs in its own "host"
        assert ip("netns", "identify", str(pid)).stdout.strip() == namespace
    peers = {client["addr"].rsplit(":", 1)[0] for client in cluster.client.client_list()}
    assert {f"{network.prefix}.{number}" for number in range(11, 11 + HOSTS)} <= peers  # they came over the links

    folder = folder_of(cluster.images, "shared", IMAGES)
    started = time.monotonic()
    job_id = cluster.submit(folder)
    # Cut a host once every host has finished a chunk or two: its worker is then mid-chunk.
    wait_until(
        lambda: all(len(cluster.chunks(host, job_id)) >= 2 for host in range(HOSTS)), 30, "a host never took work"
    )
    victim = 1
    before_cut = {host: len(cluster.chunks(host, job_id)) for host in range(HOSTS)}
    network.cut(victim)
    cut_at, cut_monotonic = time.time(), time.monotonic()
    progress_at_cut = cluster.progress(job_id)

    done = cluster.result(job_id, within=100)
    ended = time.monotonic() - cut_monotonic
    entries = done["result"]["images"]
    lost = [entry["image"] for entry in entries if "result" not in entry]
    per_host = {host: cluster.chunks(host, job_id) for host in range(HOSTS)}
    retried = [
        line
        for host in range(HOSTS)
        if host != victim
        for line in cluster.log_lines(host, "failed (AbandonedJobError); retrying")
        if job_id in line
    ]
    abandoned = sorted({int(re.search(rf"job {job_id}-(\d+) failed", line).group(1)) for line in retried})
    recovered_in = min((when(line) for line in retried), default=float("nan")) - cut_at
    runs = [chunk for chunks in per_host.values() for chunk, _ in chunks]
    print(
        f"\nmulti-host: {IMAGES} images on {HOSTS} hosts in {time.monotonic() - started:.1f} s; chunks per host "
        f"{ {f'host{h + 1}': len(c) for h, c in per_host.items()} } (images "
        f"{ {f'host{h + 1}': sum(n for _, n in c) for h, c in per_host.items()} }); host{victim + 1}'s link cut "
        f"at {progress_at_cut.get('done')} images done, with {before_cut[victim]} of its chunks finished; "
        f"chunk(s) {abandoned} found abandoned {recovered_in:.1f} s after the cut and retried; the batch ended "
        f"{ended:.1f} s after the cut; images lost: {len(lost)}; chunks finished twice: {len(runs) - len(set(runs))}"
    )
    assert done["status"] == "finished", done
    assert lost == [] and (done["result"]["done"], done["result"]["failed"]) == (IMAGES, 0), done["result"]
    # Every image once: 1,000 entries, one per index, in order, none twice.
    assert [entry["image"] for entry in entries] == [f"{folder}/p{index:04d}.jpg" for index in range(IMAGES)]
    assert all(len(chunks) >= 2 for chunks in per_host.values()), per_host  # every host did a share
    # The cut host's running chunk was found abandoned by the others and run by one of them.
    assert abandoned, "no chunk of the cut host was found abandoned"
    finished_elsewhere = {chunk for host in range(HOSTS) if host != victim for chunk, _ in per_host[host]}
    assert set(abandoned) <= finished_elsewhere
    assert recovered_in < 25  # its heartbeat's 6 s (QUICK_RECOVERY), then a worker's next look
    thumbnails = cluster.images / "resized" / folder
    assert len(list(thumbnails.glob("p*_resized.jpg"))) == IMAGES  # all in the one shared folder

    # The link comes back. A worker whose Redis calls failed for good after its job (about a minute cut
    # off: the job's write times out after 40 s, then its failure handling and its state fail to connect)
    # has quit, as RQ does on an error outside a job; its container (restart: unless-stopped) or run.py
    # starts it again, and so does this test. One that was still retrying reconnects by itself.
    network.mend(victim)
    mended = time.monotonic()
    original = cluster.workers[victim]

    def state():
        if original.poll() is not None:
            return "quit"
        return "reconnected" if cluster.waiting_from(victim) else None

    how = wait_until(
        state,
        60,
        f"host{victim + 1}'s worker neither reconnected nor quit",
    )
    if how == "quit":
        said = [line.split('msg="', 1)[-1].split("\\x0a")[0] for line in cluster.log_lines(victim, "quitting")]
        cluster.workers[victim] = cluster.start_worker(victim)
        wait_until(lambda: cluster.waiting_from(victim), 30, f"host{victim + 1}'s new worker never waited for work")
    rejoined = time.monotonic() - mended
    registered = cluster.workers[victim].pid in cluster.registered()
    again = cluster.submit(folder_of(cluster.images, "again", 120))
    assert cluster.result(again, within=30)["status"] == "finished"
    taken = cluster.chunks(victim, again)
    print(
        f"multi-host: host{victim + 1}'s worker {how}"
        + (
            f" (exit code {original.returncode}, its log: {said[-1] if said else '?'}) and was started again"
            if how == "quit"
            else ""
        )
        + f"; waiting for work {rejoined:.1f} s after its link came back; in Worker.all: {registered}; "
        f"it ran {len(taken)} chunks of the next batch"
    )
    assert taken, f"host{victim + 1} took no work after its link came back"
    if how == "quit":
        assert registered  # afresh, it registers; one that reconnected is not registered again if its key expired

"""Faults, with real processes really killed: nothing is lost when a worker dies or Redis restarts,
many API processes and workers process each image once, shutdowns are graceful, timeouts are reported.

Each test runs `python run.py` against a Redis the test owns (AOF on), so it can stop and start it; but
the test_run_py_*_redis_* tests, which kill the Redis that run.py itself started, to see it start it again."""

import os
import re
import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from PIL import Image as PILImage

from imagejobs import embedded_redis
from imagejobs.embedded_redis import free_port
from tests.support import QUICK_RECOVERY, RunningService, copy_sample

SLOW = {"width": "2000", "height": "2000", "fit": "stretch", "format": "png"}  # about a second per image


class OwnRedis:
    """A redis-server with AOF (fsync every second) on a fixed port and folder, to stop and start again."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.password = folder, free_port(), secrets.token_urlsafe(12)
        self.url = embedded_redis.url(self.port, self.password)
        self.start()

    def start(self):
        self.process = embedded_redis.start(self.folder, self.port, self.password, appendonly=True)
        embedded_redis.wait_until_up(self.url, self.process, timeout=20)

    def stop(self, sig=signal.SIGTERM):
        self.process.send_signal(sig)
        self.process.wait(10)
        self.process.stderr.close()


@pytest.fixture
def redis_server(tmp_path):
    server = OwnRedis(tmp_path / "redis")
    yield server
    if server.process.poll() is None:
        server.stop()


def start_service(tmp_path, redis_server, *args, **env) -> tuple[RunningService, str]:
    service = RunningService(
        tmp_path,
        "--no-classifier",
        "--port",
        str(free_port()),
        *args,
        env={"REDIS_URL": redis_server.url, **QUICK_RECOVERY, **env},
    )
    return service, service.url()


@pytest.fixture
def stop_afterwards():
    services = []
    yield services.append
    for service in services:
        if service.process.poll() is None:
            service.interrupt()


def photo_folder(images: Path, name: str, count: int) -> str:
    for index in range(count):
        copy_sample("castle_image.jpg", images / name / f"p{index:02d}.jpg")
    return name


def result(url: str, job_id: str, within: float) -> dict:
    """The job's final answer, waiting through the API (and through Redis outages) for up to `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{url}result/{job_id}", params={"wait": 10}, timeout=20)
        except requests.ConnectionError:
            time.sleep(1)
            continue
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.2 if answer.status_code == 202 else 1)
    raise AssertionError(f"job {job_id} did not end within {within} s")


def progress(url: str, job_id: str) -> dict:
    return requests.get(f"{url}result/{job_id}", timeout=10).json().get("progress") or {}


def workers_of(service: RunningService) -> list[psutil.Process]:
    return [child for child in service.descendants() if "worker.py" in " ".join(child.cmdline())]


def answers(address: str) -> bool:
    try:
        return requests.get(address, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def redis_servers_of(service: RunningService) -> list[psutil.Process]:
    found = []
    for child in service.descendants():
        try:
            if "redis-server" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_until(condition, within: float, what: str):
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def slow_batch(tmp_path, redis_server, stop_afterwards, name: str, count: int, workers: str, chunk: str):
    """The service, and a batch of slow thumbnails that it has started on: (service, url, folder, jobId)."""
    service, url = start_service(tmp_path, redis_server, "--workers", workers, CHUNK_SIZE=chunk)
    stop_afterwards(service)
    folder = photo_folder(service.images, name, count)
    job_id = requests.post(url + "imageapi", data={"imagePath": folder, **SLOW}, timeout=10).json()["jobId"]
    wait_until(lambda: progress(url, job_id).get("done", 0) >= 1, 60, "the batch never started")
    return service, url, folder, job_id


def assert_every_image_once(done: dict, folder: str, count: int):
    entries = done["result"]["images"]
    assert done["status"] == "finished" and (done["result"]["done"], done["result"]["failed"]) == (count, 0), done[
        "result"
    ]
    assert sorted(entry["image"] for entry in entries) == [f"{folder}/p{index:02d}.jpg" for index in range(count)]


def test_a_worker_killed_mid_batch_loses_nothing(tmp_path, redis_server, stop_afterwards):
    service, url, folder, job_id = slow_batch(
        tmp_path, redis_server, stop_afterwards, "killed", 8, workers="2", chunk="2"
    )
    victim = workers_of(service)[0]
    victim.send_signal(signal.SIGKILL)  # mid-chunk: its job is abandoned, found by the heartbeat, retried
    done = result(url, job_id, within=180)
    assert_every_image_once(done, folder, 8)
    for index in range(8):
        with PILImage.open(service.images / "resized" / folder / f"p{index:02d}_resized.png") as thumb:
            assert thumb.size == (2000, 2000)  # every thumbnail whole (written atomically, idempotently)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_redis_restarted_mid_batch_loses_nothing(tmp_path, redis_server, stop_afterwards, sig):
    service, url, folder, job_id = slow_batch(
        tmp_path, redis_server, stop_afterwards, "restart", 8, workers="2", chunk="2"
    )
    time.sleep(1.2)  # AOF fsyncs every second
    redis_server.stop(sig)
    down = [requests.get(url + path, timeout=15) for path in ("health", f"result/{job_id}")]
    assert [answer.status_code for answer in down] == [503, 503]  # not a 500, not a hang
    assert all("error" in answer.json() for answer in down)
    time.sleep(2)
    redis_server.start()  # the same port and data
    done = result(url, job_id, within=180)
    assert_every_image_once(done, folder, 8)
    # The workers reconnected: a worker that died as Redis did is started again, and one whose registration
    # was lost registers again at its next beat (an idle one beats every WORKER_TTL - 15 s).
    wait_until(lambda: requests.get(url + "health", timeout=10).json()["workers"] == 2, 20, "a worker is missing")


def test_run_py_restarts_its_own_redis_killed_mid_batch_and_loses_nothing(tmp_path, stop_afterwards):
    service = RunningService(
        tmp_path, "--no-classifier", "--workers", "2", "--port", str(free_port()), env=QUICK_RECOVERY
    )
    stop_afterwards(service)
    url = service.url()
    folder = photo_folder(service.images, "embedded", 8)
    job_id = requests.post(url + "imageapi", data={"imagePath": folder, **SLOW}, timeout=10).json()["jobId"]
    wait_until(lambda: progress(url, job_id).get("done", 0) >= 1, 60, "the batch never started")
    time.sleep(1.2)  # AOF fsyncs every second
    (redis,) = redis_servers_of(service)
    command = redis.cmdline()
    redis.send_signal(signal.SIGKILL)
    wait_until(lambda: service.process.poll() is not None or answers(url + "health"), 60, "Redis never came back")
    assert service.process.poll() is None, f"run.py gave up: {service.process.stderr.read()}"

    done = result(url, job_id, within=180)
    assert_every_image_once(done, folder, 8)
    assert service.process.poll() is None
    health = requests.get(url + "health", timeout=10)
    assert health.status_code == 200 and health.json()["workers"] == 2
    (restarted,) = redis_servers_of(service)
    assert restarted.pid != redis.pid and restarted.cmdline() == command  # on the same port
    assert service.interrupt() == 0
    said = service.process.stderr.read()
    assert "run.py: redis-server exited (signal 9); restarting it from its AOF (attempt 1" in said, said
    assert "run.py: redis-server is back on port" in said, said
    assert "stopped unexpectedly" not in said


def stderr_lines(service: RunningService) -> list[str]:
    """run.py's stderr, line by line as it comes (RunningService reads only its stdout)."""
    lines = []
    threading.Thread(target=lambda: lines.extend(service.process.stderr), daemon=True).start()
    return lines


def corrupt_aof(data: Path) -> dict[Path, bytes]:
    """Put garbage at the head of every AOF file under data, so that a Redis started on it refuses to
    start. The files are replaced, not written over: a Redis still running writes on to the old ones.
    Returns what they held, to put back."""
    held = {}
    for path in data.rglob("appendonly*"):
        if path.is_file():
            held[path] = path.read_bytes()
            path.with_name("scratch").write_bytes(b"not an AOF\r\n" + held[path])
            os.replace(path.with_name("scratch"), path)
    assert held, f"no AOF in {data}"
    return held


def wait_for_line(said: list[str], text: str, within: float) -> None:
    wait_until(lambda: any(text in line for line in said), within, f"run.py never said {text!r}: {said}")


def test_run_py_keeps_restarting_its_redis_with_back_off_until_it_can(tmp_path, stop_afterwards):
    service = RunningService(
        tmp_path, "--no-classifier", "--workers", "1", "--port", str(free_port()), env=QUICK_RECOVERY
    )
    stop_afterwards(service)
    url = service.url()
    said = stderr_lines(service)
    (redis,) = redis_servers_of(service)
    held = corrupt_aof(tmp_path / "data")
    redis.send_signal(signal.SIGKILL)
    wait_for_line(said, "(attempt 3", 30)  # after two restarts that failed, 0.5 s and 1 s apart
    for path, content in held.items():  # within the 2 s before attempt 3
        path.write_bytes(content)
    wait_for_line(said, "redis-server is back on port", 60)
    attempts = [re.search(r"\(attempt (\d+), in ([\d.]+) s\)", line).groups() for line in said if "(attempt" in line]
    assert attempts[:3] == [("1", "0.5"), ("2", "1"), ("3", "2")], said
    failed = [line for line in said if "redis-server did not come back" in line]
    assert len(failed) == len(attempts) - 1 and all("Bad file format" in line for line in failed), said  # from its log
    wait_until(lambda: answers(url + "health"), 30, "the API never found Redis again")
    assert requests.get(url + "health", timeout=10).json()["workers"] == 1
    assert service.interrupt() == 0


def test_run_py_gives_up_on_its_redis_after_restarts_in_a_row_fail(tmp_path, stop_afterwards):
    # REDIS_RESTART_MAX_DELAY=1: 0.5 + 7 x 1 s of back-off (7.5 s) instead of the default's 45.5 s.
    service = RunningService(
        tmp_path,
        "--no-classifier",
        "--workers",
        "1",
        "--port",
        str(free_port()),
        env={**QUICK_RECOVERY, "REDIS_RESTART_MAX_DELAY": "1"},
    )
    stop_afterwards(service)
    service.url()
    said = stderr_lines(service)
    children = service.descendants()
    (redis,) = redis_servers_of(service)
    corrupt_aof(tmp_path / "data")
    redis.send_signal(signal.SIGKILL)
    assert service.process.wait(60) == 1  # 0.5 + 1 + 1 + 1 + 1 + 1 + 1 + 1 s of back-off, then it stops
    wait_for_line(said, "giving up", 5)
    assert len([line for line in said if "restarting it from its AOF (attempt" in line]) == 8, said
    (gave_up,) = [line for line in said if "giving up" in line]
    assert gave_up.startswith("run.py: redis-server did not come back") and "8 restarts in a row" in gave_up
    wait_until(lambda: "Stopped.\n" in service.lines, 5, "run.py did not say Stopped.")
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def test_many_api_processes_and_workers_process_each_image_once(tmp_path, redis_server, stop_afterwards):
    service, url = start_service(tmp_path, redis_server, "--workers", "3", API_PROCESSES="3", CHUNK_SIZE="4")
    stop_afterwards(service)
    folders = [photo_folder(service.images, f"many{n}", 12) for n in range(4)]
    with ThreadPoolExecutor(8) as pool:
        ids = list(
            pool.map(
                lambda f: requests.post(url + "imageapi", data={"imagePath": f, "action": "size"}, timeout=10).json()[
                    "jobId"
                ],
                folders,
            )
        )
        answers = list(pool.map(lambda job_id: result(url, job_id, within=60), ids))
    for folder, done in zip(folders, answers):
        assert_every_image_once(done, folder, 12)
    service.interrupt()
    # Each chunk ran exactly once, in exactly one worker: no two consumers both took a job.
    lines = "".join(path.read_text() for path in (tmp_path / "logs").glob("worker-*.log"))
    for job_id in ids:
        runs = re.findall(rf"size chunk (\d+) of batch {job_id}:", lines)
        assert sorted(runs) == ["0", "1", "2"], (job_id, runs)


def test_sigterm_lets_a_worker_finish_its_job(tmp_path, redis_server, stop_afterwards):
    service, url, folder, job_id = slow_batch(
        tmp_path, redis_server, stop_afterwards, "graceful", 4, workers="1", chunk="4"
    )
    worker = workers_of(service)[0]
    worker.send_signal(signal.SIGTERM)
    worker.wait(60)  # it stops only after the chunk it holds
    assert progress(url, job_id) == {"done": 4, "failed": 0, "total": 4}  # every image done before it left
    assert_every_image_once(result(url, job_id, within=60), folder, 4)  # run.py's new worker gathers the batch
    service.interrupt()
    lines = "".join(path.read_text() for path in (tmp_path / "logs").glob("worker-*.log"))
    assert len(re.findall(rf"resize chunk 0 of batch {job_id}:", lines)) == 1  # finished, not abandoned and re-run


def test_sigterm_lets_the_api_answer_requests_in_flight(tmp_path, redis_server, stop_afterwards):
    service, url = start_service(tmp_path, redis_server, "--workers", "1")
    stop_afterwards(service)
    copy_sample("castle_image.jpg", service.images / "a.jpg")
    job_id = requests.post(url + "imageapi", data={"imagePath": "a.jpg", **SLOW}, timeout=10).json()["jobId"]
    api = next(
        child
        for child in service.descendants()
        if "gunicorn" in " ".join(child.cmdline()) and child.parent().pid == service.process.pid
    )
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(requests.get, f"{url}result/{job_id}", params={"wait": 15}, timeout=30)
        time.sleep(0.5)
        api.send_signal(signal.SIGTERM)
        answer = waiting.result()
    assert answer.status_code == 200 and answer.json()["status"] == "finished"


def test_a_job_over_its_time_limit_fails_with_the_limit_named(tmp_path, redis_server, stop_afterwards):
    service, url = start_service(tmp_path, redis_server, "--workers", "1", JOB_TIMEOUT="1", JOB_RETRIES="0")
    stop_afterwards(service)
    copy_sample("castle_image.jpg", service.images / "a.jpg")
    slow = requests.post(
        url + "imageapi",
        data={"imagePath": "a.jpg", "width": "4096", "height": "4096", "fit": "stretch", "format": "png"},
        timeout=10,
    ).json()["jobId"]
    failed = result(url, slow, within=60)
    assert failed["status"] == "failed" and "limit of 1 seconds (JOB_TIMEOUT)" in failed["error"]
    quick = requests.get(url + "imageapi", params={"imagePath": "a.jpg"}, timeout=10).json()["jobId"]
    assert result(url, quick, within=30)["status"] == "finished"  # the worker lives on


def test_a_worker_whose_key_expired_registers_again(tmp_path, redis_server, stop_afterwards):
    """A worker cut off from Redis longer than its key's life comes back to a Redis that forgot it: RQ's
    maintenance drops a worker without a key from the worker sets. Tried: the key deleted and the worker
    taken out of the sets (what expiry and that maintenance do), then one job. Came back: the worker
    registered in full at the job's end, seen by Worker.all again, and the warning in its log."""
    from redis import Redis
    from rq import Worker

    service, url = start_service(tmp_path, redis_server, "--workers", "1")
    stop_afterwards(service)
    redis = Redis.from_url(redis_server.url)
    wait_until(lambda: Worker.all(connection=redis), 20, "the worker did not register")
    (worker,) = Worker.all(connection=redis)
    redis.delete(worker.key)
    redis.srem("rq:workers", worker.key)
    redis.srem("rq:workers:images", worker.key)
    assert Worker.all(connection=redis) == []
    folder = photo_folder(service.images, "again", 1)
    job_id = requests.post(url + "imageapi", data={"imagePath": folder, "action": "size"}, timeout=10).json()["jobId"]
    assert result(url, job_id, within=30)["status"] == "finished"
    wait_until(lambda: [w.name for w in Worker.all(connection=redis)] == [worker.name], 10, "not registered again")
    assert redis.hget(worker.key, "birth") is not None  # a full registration, not the bare key a beat leaves
    assert "registered again: its key had expired" in "".join(
        path.read_text() for path in (tmp_path / "logs").glob("worker-*.log")
    )

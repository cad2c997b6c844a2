"""`python run.py` as a user runs it: its own embedded Redis, real workers, gunicorn, HTTP, and Ctrl+C."""

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
import requests

from imagejobs.embedded_redis import free_port
from tests.support import ROOT, RunningService, copy_sample


@pytest.fixture
def service(tmp_path):
    running = RunningService(
        tmp_path, "--port", str(free_port()), "--workers", "2", "--no-classifier", env={"RESULT_TTL": "3"}
    )
    yield running
    if running.process.poll() is None:
        running.interrupt()


def test_run_py_serves_http_and_ctrl_c_leaves_nothing_behind(service):
    url = service.url()
    children = service.descendants()
    assert len(children) >= 4  # redis-server, two workers, gunicorn (and its workers)
    copy_sample("jemma.png", service.images / "dogs" / "jemma.png")
    copy_sample("castle_image.jpg", service.images / "dogs" / "castle.jpg")
    (service.images / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")

    answer = requests.post(url + "imageapi", data={"imagePath": "dogs", "width": "64"}, timeout=10)
    assert answer.status_code == 202
    job_id = answer.json()["jobId"]
    done = requests.get(url + f"result/{job_id}", params={"wait": 20}, timeout=30).json()
    assert done["status"] == "finished" and (done["result"]["done"], done["result"]["failed"]) == (2, 1)
    assert (service.images / "resized" / "dogs" / "jemma_resized.png").is_file()

    health = requests.get(url + "health", timeout=5).json()
    assert health["workers"] == 2

    # the result lives RESULT_TTL (3 s here) and then the job is gone
    time.sleep(4)
    expired = requests.get(url + f"result/{job_id}", timeout=5)
    assert expired.status_code == 404 and "expired" in expired.json()["error"]

    started = time.monotonic()
    assert service.interrupt() == 0
    assert time.monotonic() - started < 10.5
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]


def test_log_lines_carry_service_job_and_action(service, tmp_path):
    url = service.url()
    copy_sample("castle_image.jpg", service.images / "a\nforged line.jpg")  # a file name that tries to start a log line
    job_id = requests.get(url + "imageapi", params={"imagePath": "a\nforged line.jpg"}, timeout=10).json()["jobId"]
    assert requests.get(url + f"result/{job_id}", params={"wait": 20}, timeout=30).json()["status"] == "finished"
    service.interrupt()
    logs = {path.name: path.read_text() for path in (tmp_path / "logs").glob("*.log")}
    api_lines = "".join(text for name, text in logs.items() if name.startswith("api-")).splitlines()
    worker_lines = "".join(text for name, text in logs.items() if name.startswith("worker-")).splitlines()
    assert any(f"job={job_id} action=size" in line and "service=api" in line for line in api_lines)
    mine = [line for line in worker_lines if f"job={job_id} action=size" in line]
    assert mine and all(" service=worker script=tasks.py pid=" in line for line in mine)
    assert any("a\\x0aforged line.jpg" in line for line in mine)  # the newline is escaped
    assert not any(line.startswith("forged line") for line in worker_lines)


def test_run_py_refuses_a_taken_port(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        running = RunningService(tmp_path, "--port", str(port))
        assert running.process.wait(30) != 0
    message = running.process.stderr.read().strip()
    assert message.startswith("run.py: port") and "not free" in message and len(message.splitlines()) == 1


def test_run_py_refuses_a_missing_images_folder(tmp_path):
    running = RunningService(tmp_path, env={"IMAGES_DIR": str(tmp_path / "nope")})
    assert running.process.wait(30) != 0
    message = running.process.stderr.read().strip()
    assert "images folder" in message and "does not exist" in message and len(message.splitlines()) == 1


def test_run_py_refuses_an_unreachable_redis(tmp_path):
    (tmp_path / "images").mkdir()
    environment = {**os.environ, "REDIS_URL": "redis://:secret@127.0.0.1:9/0", "IMAGES_DIR": str(tmp_path / "images")}
    failed = subprocess.run(
        [sys.executable, str(ROOT / "run.py")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert failed.returncode != 0
    assert (
        "unreachable" in failed.stderr
        and "secret" not in failed.stderr
        and len(failed.stderr.strip().splitlines()) == 1
    )


def test_run_py_dashboard_serves_rq_dashboard_on_loopback(tmp_path):
    port = free_port()
    running = RunningService(
        tmp_path, "--port", str(free_port()), "--workers", "1", "--no-classifier", "--dashboard", str(port)
    )
    try:
        running.url()
        deadline = time.monotonic() + 20
        while True:  # the dashboard starts beside the API; give it a moment
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/0/data/queues.json", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "rq-dashboard did not answer"
                time.sleep(0.2)
        assert answer.status_code == 200 and "queues" in answer.json()
        assert any(f"rq-dashboard at http://127.0.0.1:{port}/" in line for line in running.lines)
    finally:
        running.interrupt()

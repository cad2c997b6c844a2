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


def test_run_py_prints_its_url_once_and_stopped_once_stopped(service):
    url = service.url()
    assert service.interrupt() == 0
    deadline = time.monotonic() + 10
    while "Stopped.\n" not in service.lines:  # the last line run.py prints; the reader thread may lag behind
        assert time.monotonic() < deadline, service.lines
        time.sleep(0.05)
    assert [line for line in service.lines if "http://" in line] == [
        f"Image service ready at {url} (2 workers); Ctrl+C stops it.\n"
    ]
    assert service.lines[-1] == "Stopped.\n"
    # gunicorn's own "Listening at: http://..." is off too (gunicorn.conf.py logs its warnings only)
    others = [line for line in service.process.stderr.read().splitlines() if "http://" in line]
    assert others == []


def test_run_py_starts_again_at_once_on_the_same_port(tmp_path):
    port = free_port()
    first = RunningService(tmp_path, "--port", str(port), "--workers", "1", "--no-classifier")
    try:
        url = first.url()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := client.recv(65536):  # to the end: the server closes first, so its side waits in TIME_WAIT
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        assert first.interrupt() == 0
    lingering = [conn.status for conn in psutil.net_connections("tcp") if conn.laddr and conn.laddr.port == port]
    assert psutil.CONN_TIME_WAIT in lingering, lingering  # what a bind without SO_REUSEADDR trips on
    again = RunningService(tmp_path, "--port", str(port), "--workers", "1", "--no-classifier")
    try:
        assert again.url() == url
        assert requests.get(url + "health", timeout=10).status_code == 200
    finally:
        assert again.interrupt() == 0


def refused(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """run.py with the environment RunningService gives it, run to its end; on a free port unless args name
    one (the default 5000 is often the user's own service: the refusals tested then were "port not free")."""
    if "--port" not in args:
        args = (*args, "--port", str(free_port()))
    (tmp_path / "images").mkdir(exist_ok=True)
    environment = {**os.environ, "IMAGES_DIR": str(tmp_path / "images"), "LOGS_DIR": str(tmp_path / "logs")}
    environment.pop("REDIS_URL")
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp_path,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert done.stdout == ""  # no "Stopped.": nothing had started
    assert not (tmp_path / "data").exists()  # not even Redis
    return done


def test_run_py_refuses_a_taken_port(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        message = refused(tmp_path, "--port", str(port)).stderr.strip()
    assert message.startswith("run.py: port") and "not free" in message and len(message.splitlines()) == 1


def test_run_py_refuses_a_missing_images_folder(tmp_path):
    message = refused(tmp_path, env={"IMAGES_DIR": str(tmp_path / "nope")}).stderr.strip()
    assert "images folder" in message and "does not exist" in message and len(message.splitlines()) == 1


def test_run_py_refuses_an_unreachable_redis(tmp_path):
    failed = refused(tmp_path, env={"REDIS_URL": "redis://:secret@127.0.0.1:9/0"})
    assert (
        "unreachable" in failed.stderr
        and "secret" not in failed.stderr
        and len(failed.stderr.strip().splitlines()) == 1
    )


def test_run_py_serves_the_rq_dashboard_inside_the_api_for_json_jobs(service):
    """rq-dashboard is part of the API at /rq/ (no process or port of its own), and reads this service's
    JSON jobs: a finished job's page shows it (rq-dashboard alone unpickled them and answered 500)."""
    url = service.url()
    copy_sample("castle_image.jpg", service.images / "a.jpg")
    job = requests.get(url + "imageapi", params={"imagePath": "a.jpg", "wait": 10}, timeout=20).json()
    assert requests.get(url + "rq/", timeout=10).status_code == 200
    page = requests.get(url + f"rq/0/data/job/{job['jobId']}.json", timeout=10)
    assert page.status_code == 200 and page.json()["id"] == job["jobId"]

"""Safe to expose: bearer tokens, the default bind address, Redis auth, JSON-only jobs, and limits."""

import io
import logging
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from rq.suspension import resume, suspend

from imagejobs.config import Settings
from imagejobs.embedded_redis import free_port
from imagejobs.worker import SUSPENSION_CHECK_EVERY
from RedisConfig import queue
from tests.support import ROOT, copy_sample, jpeg_bytes, rel, result_of, submit, wait_for_workers

# --- tokens ----------------------------------------------------------------------------------------------


def test_with_tokens_every_route_but_health_and_the_page_needs_one(configured, caplog):
    client = configured(api_tokens="first-token, second-token")
    for path in (
        "/imageapi?imagePath=x.jpg",
        "/result/abc",
        "/result/file?jobId=abc",
        "/metrics",
        "/images",
        "/openapi.json",
    ):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic second-token"},
            {"Authorization": "Bearer first-token-and-more"},
        ):
            answer = client.get(path, headers=headers)
            # no token, a wrong one, the wrong scheme, a longer one -> 401 {"error": "This service needs a token: ..."}
            assert answer.status_code == 401, (path, headers)
            assert "Bearer" in answer.get_json()["error"] and answer.headers["WWW-Authenticate"].startswith("Bearer")
    for public in ("/health", "/"):  # the page holds no data; it asks for the token and sends it
        assert client.get(public).status_code == 200
    with caplog.at_level(logging.INFO):
        assert client.get("/result/abc", headers={"Authorization": "Bearer second-token"}).status_code == 404
    assert "second-token" not in caplog.text  # tokens are never logged


def test_tokens_may_come_from_a_file(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alpha\nbeta,gamma\n")
    assert Settings(api_tokens=str(tokens)).tokens == ("alpha", "beta", "gamma")


def test_without_tokens_the_api_listens_on_loopback_only_unless_told():
    assert Settings(api_tokens=None).listen_host == "127.0.0.1"
    assert Settings(api_tokens=None, bind_host="0.0.0.0").listen_host == "0.0.0.0"
    assert Settings(api_tokens="t").listen_host == "0.0.0.0"


# --- Redis -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["worker.py", "images"], ["-c", "import RestAPI"], ["run.py"]])
def test_require_redis_auth_refuses_a_url_without_password(command, tmp_path):
    if command == ["run.py"]:  # on a free port: with the default 5000 taken, run.py refused for that instead
        command = [*command, "--port", str(free_port())]
    environment = {
        **os.environ,
        "REQUIRE_REDIS_AUTH": "1",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "IMAGES_DIR": str(tmp_path),
        "LOGS_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0
    assert "REQUIRE_REDIS_AUTH is set but REDIS_URL" in done.stderr and "has no password" in done.stderr


@pytest.mark.parametrize(
    "serializer, function",
    [(None, "os.system"), (JSONSerializer, "os.system"), (JSONSerializer, "subprocess.getoutput")],
)
def test_jobs_that_name_foreign_code_are_refused(workers, redis_url, tmp_path, serializer, function):
    """Someone with write access to Redis queues a job: a pickle (RQ's default), or JSON naming a function
    that is not one of ours. The workers fail it and nothing runs."""
    marker = tmp_path / f"ran-{uuid.uuid4().hex}"
    job = Queue("images", connection=Redis.from_url(redis_url), serializer=serializer).enqueue(
        function, f"touch {marker}"
    )
    assert job.latest_result(timeout=10) is not None
    assert job.get_status(refresh=True) == "failed"
    assert not marker.exists()
    wait_for_workers(2)  # and the workers live on


# --- limits ----------------------------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(configured, folder, images_root, redis_url):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    client = configured(max_queue_depth=1)
    request = {"query_string": {"imagePath": rel(folder / "a.jpg", images_root)}}
    redis = Redis.from_url(redis_url)
    suspend(redis)  # the workers stop taking jobs (each may still take the one it is blocked waiting for)
    time.sleep(SUSPENSION_CHECK_EVERY)  # a worker looks for `rq suspend` at most this often
    try:
        answers = [client.get("/imageapi", **request) for _ in range(6)]
    finally:
        resume(redis)
    accepted = [answer for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code != 202]
    assert refused and all(answer.status_code == 429 and answer.headers["Retry-After"].isdigit() for answer in refused)
    assert "MAX_QUEUE_DEPTH" in refused[0].get_json()["error"]
    assert all(result_of(client, answer.get_json()["jobId"])["status"] == "finished" for answer in accepted)  # kept


def test_concurrent_submits_never_push_a_queue_past_its_limit(configured, folder, images_root, redis_url):
    """The depth is read in the enqueue's own transaction: 24 submits at once against a limit of 3 leave
    at most 3 jobs waiting (the two workers may each hold one more), and every refused job is gone."""
    copy_sample("castle_image.jpg", folder / "a.jpg")
    client = configured(max_queue_depth=3)
    request = {"query_string": {"imagePath": rel(folder / "a.jpg", images_root)}}
    redis = Redis.from_url(redis_url)
    jobs_before = set(redis.scan_iter("rq:job:*"))
    suspend(redis)
    time.sleep(SUSPENSION_CHECK_EVERY)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: client.get("/imageapi", **request), range(24)))
        waiting = queue("images").count
    finally:
        resume(redis)
    accepted = [answer.get_json()["jobId"] for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(accepted) + len(refused) == 24 and waiting <= 3 and len(accepted) <= 3 + 2
    assert all("MAX_QUEUE_DEPTH" in answer.get_json()["error"] for answer in refused)
    for job_id in accepted:
        assert result_of(client, job_id)["status"] == "finished"
    assert set(redis.scan_iter("rq:job:*")) - jobs_before == {f"rq:job:{job_id}".encode() for job_id in accepted}


def test_too_many_uploads_or_folder_images_are_refused(configured, folder, images_root):
    for index in range(3):
        copy_sample("castle_image.jpg", folder / f"{index}.jpg")
    client = configured(max_upload_files=2, max_folder_images=2)
    files = [(io.BytesIO(jpeg_bytes()), f"{index}.jpg") for index in range(3)]
    answer = client.post("/imageapi", data={"image": files}, content_type="multipart/form-data")
    assert answer.status_code == 400 and "MAX_UPLOAD_FILES" in answer.get_json()["error"]
    answer = client.post("/imageapi", data={"imagePath": rel(folder, images_root)})
    assert answer.status_code == 400 and "MAX_FOLDER_IMAGES" in answer.get_json()["error"]


def test_a_decompression_bomb_is_a_per_image_error(client, folder, images_root):
    from PIL import Image as PILImage

    PILImage.new("1", (10_000, 6_000)).save(folder / "bomb.png")  # 60 MP in a few KB, over the 50 MP default
    copy_sample("castle_image.jpg", folder / "fine.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root)})
    entries = {
        entry["image"].rsplit("/", 1)[1]: entry for entry in result_of(client, body["jobId"])["result"]["images"]
    }
    assert "MAX_IMAGE_PIXELS" in entries["bomb.png"]["error"] and "result" in entries["fine.jpg"]

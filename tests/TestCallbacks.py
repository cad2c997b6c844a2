"""Calling back when a job ends: a receiver run by the test (on loopback, which the suite's workers may
reach: ALLOWED_URL_NETWORKS=127.0.0.0/8) gets the job's answer, signed; a failing receiver is tried
again; a loopback URL is refused by default; a slow receiver holds up no job."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imagejobs import callbacks
from tests.support import copy_sample, rel, result_of, submit


class Receiver(ThreadingHTTPServer):
    """Records every POST (headers and body); answers the statuses in `script` first, then 200."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.posts, self.script, self.hold, self.held = [], [], None, []
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def received(self, count: int, within: float = 30) -> list:
        deadline = time.monotonic() + within
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} callbacks arrived, not {count}"
            time.sleep(0.05)
        return self.posts


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.hold is not None:
            self.server.held.append(body)
            self.server.hold.wait(30)
        self.server.posts.append((dict(self.headers), body))
        status = self.server.script.pop(0) if self.server.script else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    if server.hold is not None:
        server.hold.set()
    server.shutdown()
    server.server_close()


def verified(headers: dict, body: bytes, secret: str) -> bool:
    """How a receiver checks a callback (docs/operations.md shows the same)."""
    fields = dict(part.split("=", 1) for part in headers[callbacks.HEADER].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300


def test_a_callback_arrives_signed_with_the_jobs_answer(client, folder, images_root, receiver):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder / "a.jpg", images_root), "callbackUrl": receiver.url})
    done = result_of(client, body["jobId"])
    ((headers, sent),) = receiver.received(1)
    answer = json.loads(sent)
    assert answer["jobId"] == body["jobId"] and answer["status"] == "finished"
    assert answer["result"] == done["result"] and "callback" not in answer
    secret = client.get("/callbacks/secret").get_json()["secret"]
    assert verified(headers, sent, secret) and headers["X-Imagejobs-Job"] == body["jobId"]
    assert not verified(headers, sent + b" ", secret)  # a body changed on the way does not verify
    deadline = time.monotonic() + 10
    while client.get(f"/result/{body['jobId']}").get_json()["callback"]["status"] != "delivered":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    outcome = client.get(f"/result/{body['jobId']}").get_json()["callback"]
    assert outcome["attempts"] == 1 and outcome["lastStatus"] == 200 and outcome["deliveredAt"]


def test_a_failing_receiver_is_tried_again_with_back_off(client, folder, images_root, receiver):
    receiver.script = [500, 503]  # down twice, then up
    copy_sample("castle_image.jpg", folder / "a.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder / "a.jpg", images_root), "callbackUrl": receiver.url})
    posts = receiver.received(3)
    assert [json.loads(sent)["jobId"] for _, sent in posts] == [body["jobId"]] * 3
    deadline = time.monotonic() + 10
    while (outcome := client.get(f"/result/{body['jobId']}").get_json()["callback"])["status"] != "delivered":
        assert time.monotonic() < deadline, outcome
        time.sleep(0.1)
    assert outcome["attempts"] == 3


def test_a_failed_and_a_canceled_job_call_back_too(client, folder, images_root, receiver):
    (folder / "text.jpg").write_text("not an image")
    failed = submit(
        client, "POST", data={"imagePath": rel(folder / "text.jpg", images_root), "callbackUrl": receiver.url}
    )
    copy_sample("castle_image.jpg", folder / "a.jpg")
    classify = {"imagePath": rel(folder / "a.jpg", images_root), "action": "classify", "callbackUrl": receiver.url}
    queued = submit(client, "POST", data=classify)  # no classify worker in the suite: it stays queued
    assert client.delete(f"/result/{queued['jobId']}").status_code == 200
    statuses = {json.loads(sent)["jobId"]: json.loads(sent)["status"] for _, sent in receiver.received(2)}
    assert statuses == {failed["jobId"]: "failed", queued["jobId"]: "canceled"}


def test_a_loopback_callback_url_is_refused_by_default(configured, folder, images_root):
    client = configured(allowed_url_networks="")
    copy_sample("castle_image.jpg", folder / "a.jpg")
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook", "http://169.254.169.254/"):
        answer = client.post("/imageapi", data={"imagePath": rel(folder / "a.jpg", images_root), "callbackUrl": url})
        assert answer.status_code == 400 and "callbackUrl" in answer.get_json()["error"], (url, answer.get_json())
    answer = client.post("/imageapi", data={"imagePath": "a.jpg", "callbackUrl": "file:///etc/passwd"})
    assert answer.status_code == 400 and "http" in answer.get_json()["error"]


def test_the_url_is_checked_again_at_every_attempt(redis_url, workers):
    """A delivery whose URL leads (now) to a loopback address while loopback is not allowed fails with the
    refusal, before anything connects; nothing is sent."""
    from redis import Redis

    from imagejobs.config import Settings, settings

    redis = Redis.from_url(redis_url)
    strict = Settings(**{**settings.model_dump(), "allowed_url_networks": "", "callback_retry_seconds": 0})
    redis.hset(callbacks.state_key("check-again"), mapping={"url": "http://127.0.0.1:9/hook", "status": "pending"})
    courier = callbacks.Courier(redis, strict, lambda job_id: {"jobId": job_id, "status": "finished"})
    courier.attempt("check-again")
    stored = redis.hgetall(callbacks.state_key("check-again"))
    assert stored[b"status"] == b"failed" and b"loopback" in stored[b"lastError"]


def test_a_slow_receiver_holds_up_no_job(client, folder, images_root, receiver):
    receiver.hold = threading.Event()  # the receiver answers nothing until the test lets it
    copy_sample("castle_image.jpg", folder / "a.jpg")
    data = {"imagePath": rel(folder / "a.jpg", images_root)}
    first = submit(client, "POST", data={**data, "callbackUrl": receiver.url})
    result_of(client, first["jobId"])
    for _ in range(4):  # both workers go on with other jobs while a delivery waits on the receiver
        assert result_of(client, submit(client, "POST", data=data)["jobId"])["status"] == "finished"
    assert receiver.posts == []  # still held
    receiver.hold.set()
    receiver.received(1)


def test_slow_receivers_do_not_hold_up_another_receivers_callback(client, folder, images_root, receiver):
    """Tried: 5 jobs whose receiver answers nothing (each holds a delivering thread up to its read timeout),
    then one job with another receiver. Came back: the other receiver's callback at once (with one
    delivering thread per worker it waited behind the slow ones: 29.5 s in a hostile run)."""
    receiver.hold = threading.Event()
    other = Receiver()
    try:
        copy_sample("castle_image.jpg", folder / "a.jpg")
        data = {"imagePath": rel(folder / "a.jpg", images_root)}
        slow = [submit(client, "POST", data={**data, "callbackUrl": receiver.url})["jobId"] for _ in range(5)]
        for job_id in slow:
            result_of(client, job_id)
        deadline = time.monotonic() + 10
        while len(receiver.held) < 5:  # every slow delivery is under way, and held
            assert time.monotonic() < deadline, receiver.held
            time.sleep(0.05)
        result_of(client, submit(client, "POST", data={**data, "callbackUrl": other.url})["jobId"])
        other.received(1, within=3)
    finally:
        receiver.hold.set()
        other.shutdown()
        other.server_close()


def test_a_callback_scheduled_before_its_job_recorded_its_end_waits_for_the_end(
    client, redis_url, folder, images_root, receiver
):
    """RQ runs a failure callback (which schedules the delivery) before it records the failure, so the
    workers' couriers can find a due delivery whose job has not ended. Tried: a delivery scheduled for a
    job still queued (a classify job: the suite has no classify worker), then the job canceled. Came back:
    nothing sent while it waited, then one callback that says "canceled"."""
    from redis import Redis

    from imagejobs import jobs
    from imagejobs.config import settings

    copy_sample("castle_image.jpg", folder / "a.jpg")
    classify = {"imagePath": rel(folder / "a.jpg", images_root), "action": "classify", "callbackUrl": receiver.url}
    queued = submit(client, "POST", data=classify)
    redis = Redis.from_url(redis_url)
    with redis.pipeline() as pipe:
        callbacks.schedule(pipe, jobs.fetch(redis, queued["jobId"], settings.result_ttl), settings)
        pipe.execute()
    time.sleep(1)
    assert receiver.posts == [] and redis.hget(callbacks.state_key(queued["jobId"]), "url") == receiver.url.encode()
    assert client.delete(f"/result/{queued['jobId']}").status_code == 200
    ((_, sent),) = receiver.received(1)
    assert json.loads(sent)["status"] == "canceled"


def test_a_job_told_twice_that_it_ended_calls_back_once(client, redis_url, folder, images_root, receiver):
    """Tried: a finished job's delivery scheduled again (as a cancel, then the end of the image in hand, both
    schedule it), and the delivered one put back in the due set (as a courier that took it while another
    settled it would). Came back: one POST, attempts 1, nothing more."""
    from redis import Redis

    from imagejobs import jobs
    from imagejobs.config import settings

    copy_sample("castle_image.jpg", folder / "a.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder / "a.jpg", images_root), "callbackUrl": receiver.url})
    result_of(client, body["jobId"])
    receiver.received(1)
    redis = Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while redis.hget(callbacks.state_key(body["jobId"]), "status") != b"delivered":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with redis.pipeline() as pipe:
        callbacks.schedule(pipe, jobs.fetch(redis, body["jobId"], settings.result_ttl), settings)
        pipe.execute()
    redis.zadd(callbacks.DUE, {body["jobId"]: time.time()})
    redis.lpush(callbacks.WAKE, body["jobId"])  # wakes a courier at once
    time.sleep(1.5)
    assert len(receiver.posts) == 1 and redis.zscore(callbacks.DUE, body["jobId"]) is None
    assert client.get(f"/result/{body['jobId']}").get_json()["callback"]["attempts"] == 1

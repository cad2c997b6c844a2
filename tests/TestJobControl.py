"""Watching and managing work: progress as it happens (wait with seen), cancel, strict parameters,
thumbnails by path, and the browsable docs, through the API with real workers and Redis."""

import io
import re
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from RedisConfig import CLASSIFY_QUEUE, queue
from tests.support import copy_sample, jpeg_bytes, rel, result_of, submit

SLOW = {"width": "2000", "height": "2000", "fit": "stretch", "format": "png"}  # about a second an image


def slow_batch(client, folder, images_root, count: int) -> str:
    for index in range(count):
        copy_sample("castle_image.jpg", folder / f"p{index:02d}.jpg")
    return submit(client, "POST", data={"imagePath": rel(folder, images_root), **SLOW})["jobId"]


def handled(answer: dict) -> int:
    progress = answer.get("progress") or {}
    return progress.get("done", 0) + progress.get("failed", 0)


# --- progress as it happens ---------------------------------------------------------------------------------


def test_wait_with_seen_answers_as_each_image_is_done(client, folder, images_root):
    # Before: wait=S answered only when the job ended, so a page saw a batch's progress at most every S
    # seconds. Now: wait=S&seen=N answers as soon as done + failed differs from N.
    job_id = slow_batch(client, folder, images_root, 6)
    seen, steps = 0, []
    while True:
        answer = client.get(f"/result/{job_id}?wait=20&seen={seen}")
        body = answer.get_json()
        if answer.status_code == 200:
            break
        assert answer.status_code == 202 and handled(body) != seen, body  # woken by progress, not by the time
        seen = handled(body)
        steps.append(seen)
    assert body["status"] == "finished" and body["result"]["done"] == 6
    assert len(steps) >= 2 and steps == sorted(steps) and steps[0] < 6  # several answers before the end


def test_wait_with_a_stale_seen_answers_at_once(client, folder, images_root):
    job_id = slow_batch(client, folder, images_root, 4)
    started = time.monotonic()
    answer = client.get(f"/result/{job_id}?wait=20&seen=999")
    assert answer.status_code in (200, 202) and time.monotonic() - started < 10
    assert client.get(f"/result/{job_id}?wait=1&seen=-1").status_code == 400  # seen is a count: 0 or more
    result_of(client, job_id)


# --- cancel -----------------------------------------------------------------------------------------------------


def test_a_queued_job_canceled_never_runs(client, folder, images_root):
    # A classify job: no classify worker runs in the suite, so it stays queued.
    copy_sample("castle_image.jpg", folder / "a.jpg")
    before = queue(CLASSIFY_QUEUE).count
    job_id = submit(client, "POST", data={"imagePath": rel(folder / "a.jpg", images_root), "action": "classify"})[
        "jobId"
    ]
    answer = client.delete(f"/result/{job_id}")
    assert answer.status_code == 200 and answer.get_json()["status"] == "canceled"
    assert queue(CLASSIFY_QUEUE).count == before  # off the queue: no worker will ever take it
    assert client.get(f"/result/{job_id}").get_json()["status"] == "canceled"
    # Cancelling it again: 409 with a sentence
    again = client.delete(f"/result?jobId={job_id}")
    assert again.status_code == 409 and "already ended" in again.get_json()["error"]


def test_a_running_batch_canceled_starts_no_new_image_and_keeps_what_is_done(client, folder, images_root, workers):
    job_id = slow_batch(client, folder, images_root, 12)
    answer = client.get(f"/result/{job_id}?wait=20&seen=0").get_json()
    assert handled(answer) >= 1, answer
    canceled = client.delete(f"/result/{job_id}")
    body = canceled.get_json()
    assert canceled.status_code == 200 and body["status"] == "canceled"
    # An image a worker was making at the cancel may still end (one per worker); none starts after it.
    # Progress is read until it has not moved for 3 s (about three images' time, had the chunks gone on).
    last, still_since, deadline = handled(body), time.monotonic(), time.monotonic() + 60
    while time.monotonic() - still_since < 3:
        assert time.monotonic() < deadline, "progress never settled after the cancel"
        time.sleep(0.5)
        now = client.get(f"/result/{job_id}").get_json()
        if handled(now) != last:
            last, still_since = handled(now), time.monotonic()
    final = client.get(f"/result/{job_id}").get_json()
    assert final["status"] == "canceled" and handled(final) <= handled(body) + len(workers) < 12, (body, final)
    # Where a finished batch has them (they were in a top-level "entries" alone, kept a release for old clients).
    entries = final["result"]["images"]
    assert final["entries"] == entries and final["result"]["done"] == final["progress"]["done"]
    assert len(entries) == handled(final) and all("result" in entry for entry in entries)
    names = [entry["image"] for entry in entries]
    assert names == sorted(names)  # in the order of their images
    assert client.delete(f"/result/{job_id}").status_code == 409
    # what it made downloads as one zip (it was a 404 that asked for the index of an entry that succeeded)
    archive = client.get(f"/result/file?jobId={job_id}")
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(archive.data)) as opened:
        assert len(opened.namelist()) == len(entries)
    one = client.get(f"/result/file?jobId={job_id}&index=0")
    assert one.status_code == 404 and "canceled" in one.get_json()["error"]


def test_cancels_at_once_are_one_200_and_409s(app, workers, folder, images_root):
    """Tried: 8 DELETEs of one running batch at the same moment, and 8 of one queued job (a classify job: the
    suite has no classify worker). Came back: exactly one 200 each, the others 409 with a sentence, no 500
    (the second cancel of a chunk used to raise in RQ)."""
    client = app.test_client()
    batch_id = slow_batch(client, folder, images_root, 12)
    assert handled(client.get(f"/result/{batch_id}?wait=20&seen=0").get_json()) >= 1
    copy_sample("castle_image.jpg", folder / "c.jpg")
    queued_id = submit(client, "POST", data={"imagePath": rel(folder / "c.jpg", images_root), "action": "classify"})[
        "jobId"
    ]
    for job_id in (batch_id, queued_id):
        start = threading.Barrier(8)

        def cancel(_, job_id=job_id, start=start):
            own = app.test_client()
            start.wait(10)
            answer = own.delete(f"/result/{job_id}")
            return answer.status_code, answer.get_json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(cancel, range(8)))
        codes = sorted(code for code, _ in answers)
        assert codes == [200] + [409] * 7, answers
        assert all("already ended (canceled)" in body["error"] for code, body in answers if code == 409), answers
        assert client.get(f"/result/{job_id}").get_json()["status"] == "canceled"


def test_a_chunk_of_a_canceled_or_expired_batch_does_not_run(client, folder, images_root):
    """Tried: the start of a chunk (as a retry of one abandoned by a dead worker would start) for a canceled
    batch, and for a batch whose record expired. Came back: it does not run, and nothing is written for
    the expired one (it used to process every image and recreate the batch's record without an expiry)."""
    from imagejobs import batch
    from RedisConfig import connection

    for index in range(2):
        copy_sample("castle_image.jpg", folder / f"p{index}.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "action": "classify"})  # stays queued
    assert client.delete(f"/result/{body['jobId']}").status_code == 200
    redis = connection()
    assert batch.begin_chunk(redis, body["jobId"]) == batch.CANCELED
    assert batch.begin_chunk(redis, "expired-batch") == batch.EXPIRED
    assert redis.keys("imagejob:batch:expired-batch*") == []


def test_an_ended_or_unknown_job_cannot_be_canceled(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    job_id = submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})["jobId"]
    result_of(client, job_id)
    answer = client.delete(f"/result/{job_id}")
    assert answer.status_code == 409 and "finished" in answer.get_json()["error"]
    assert client.get(f"/result/{job_id}").get_json()["status"] == "finished"  # untouched
    assert client.delete("/result/no-such-job").status_code == 404


# --- strict parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["query", "form", "json"])
def test_a_misspelt_parameter_is_a_400_naming_it_and_the_nearest_name(client, folder, images_root, how):
    # Before: widht=20 was ignored and the thumbnail made 100 wide. Now: 400 naming it, and width.
    copy_sample("castle_image.jpg", folder / "a.jpg")
    values = {"imagePath": rel(folder / "a.jpg", images_root), "widht": 20}
    sent = {"query": {"query_string": values}, "form": {"data": values}, "json": {"json": values}}[how]
    answer = client.post("/imageapi", **sent)
    assert answer.status_code == 400
    assert "'widht'" in answer.get_json()["error"] and "'width'" in answer.get_json()["error"]


@pytest.mark.parametrize(
    "url, named",
    [
        ("/result/abc?wiat=3", "wiat"),
        ("/result/file?jobId=abc&idx=1", "idx"),
        ("/images?pth=x", "pth"),
        ("/health?verbose=1", "verbose"),
        ("/actions?x=1", "x"),
    ],
)
def test_every_route_refuses_parameters_it_does_not_take(client, url, named):
    answer = client.get(url)
    assert answer.status_code == 400 and f"'{named}'" in answer.get_json()["error"], answer.get_json()


# --- thumbnails by path ------------------------------------------------------------------------------------------


def test_a_thumbnail_can_be_fetched_by_its_path(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder / "a.jpg", images_root)})
    path = result_of(client, body["jobId"])["result"]["path"]
    assert path == f"resized/{rel(folder, images_root)}/a_resized.jpg"  # relative to the images root
    answer = client.get("/images/file", query_string={"path": path})
    assert answer.status_code == 200 and answer.mimetype == "image/jpeg"
    assert answer.data == (images_root / path).read_bytes()
    (folder / "notes.txt").write_text("not an image")
    for refused in (rel(folder / "notes.txt", images_root), "../etc/passwd", rel(folder, images_root)):
        assert client.get("/images/file", query_string={"path": refused}).status_code == 400, refused


def test_another_clients_upload_cannot_be_fetched_by_path(configured):
    client = configured(api_tokens="alice:a-token,bob:b-token")
    alice, bob = {"Authorization": "Bearer a-token"}, {"Authorization": "Bearer b-token"}
    upload = {"image": (__import__("io").BytesIO(jpeg_bytes()), "mine.jpg"), "action": "size"}
    job_id = submit(client, "POST", data=upload, content_type="multipart/form-data", headers=alice)["jobId"]
    path = f"uploads/{job_id}/mine.jpg"
    assert client.get("/images/file", query_string={"path": path}, headers=alice).status_code == 200
    assert client.get("/images/file", query_string={"path": path}, headers=bob).status_code == 404


# --- browsable docs ----------------------------------------------------------------------------------------------


def test_the_docs_page_and_everything_it_loads_come_from_the_service(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(asset.startswith("/") and not asset.startswith("//") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    script = client.get("/static/docs.js").get_data(as_text=True)
    assert 'url: "/openapi.json"' in script and "validatorUrl: null" in script
    document = client.get("/openapi.json").get_json()
    assert document["servers"] == [{"url": "/", "description": "this service"}]
    assert "delete" in document["paths"]["/result/{jobId}"]
    assert any(p["name"] == "seen" for p in document["paths"]["/result/{jobId}"]["get"]["parameters"])


# --- metrics of the work ------------------------------------------------------------------------------------------


def test_work_metrics_add_up_across_flushes(redis_url, workers):
    from redis import Redis

    from imagejobs import metrics

    redis = Redis.from_url(redis_url)
    redis.delete(metrics.WORK_KEY)
    tally = metrics.Work()
    tally.image("resize", 0.004, failed=False)
    tally.image("resize", 0.2, failed=True)
    tally.job("resize", 0.21)
    tally.flush(redis)
    tally.image("resize", 0.004, failed=False)
    tally.flush(redis)
    text = metrics.exposition(redis).decode()
    assert 'imageapi_images_total{action="resize",outcome="done"} 2.0' in text
    assert 'imageapi_images_total{action="resize",outcome="failed"} 1.0' in text
    assert 'imageapi_image_duration_seconds_bucket{action="resize",le="0.005"} 2.0' in text
    assert 'imageapi_image_duration_seconds_bucket{action="resize",le="+Inf"} 3.0' in text
    assert 'imageapi_job_duration_seconds_count{action="resize"} 1.0' in text
    assert re.search(r'imageapi_workers\{state="(idle|busy)"\} \d', text)
    assert 'imageapi_queue_jobs{queue="images",state="queued"}' in text


def test_the_workers_report_their_work_to_metrics(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    result_of(client, submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})["jobId"])
    deadline = time.monotonic() + 20  # a worker adds what it counted every 10 s
    while 'imageapi_images_total{action="size",outcome="done"}' not in client.get("/metrics").get_data(as_text=True):
        assert time.monotonic() < deadline, "no worker reported its work"
        time.sleep(0.5)


def test_a_parameter_given_twice_is_a_400_on_every_route(client, folder, images_root):
    # Tried: wait, seen, index, jobId and path given twice on the routes that read them. Before: the first
    # was taken and the others ignored (a submit already said 400). Now: 400 naming it.
    copy_sample("castle_image.jpg", folder / "a.jpg")
    job_id = submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})["jobId"]
    result_of(client, job_id)
    for url in (
        f"/result/{job_id}?wait=1&wait=2",
        f"/result/{job_id}?wait=1&seen=0&seen=1",
        f"/result/file?jobId={job_id}&index=0&index=1",
        f"/result/file?jobId={job_id}&jobId={job_id}",
        f"/images?path={rel(folder, images_root)}&path=demo",
    ):
        answer = client.get(url)
        assert answer.status_code == 400 and "give it once" in answer.get_json()["error"], (url, answer.get_json())
    assert client.get(f"/result/{job_id}?wait=1").status_code == 200


# --- what a worker writes as a job starts -------------------------------------------------------------------


def test_a_job_starts_in_one_round_trip_writing_what_rq_writes(monkeypatch):
    """RQ writes a job's start in two transactions (prepare_execution, then prepare_job_execution); ImageWorker
    queues both in one, a copy of RQ's steps that a later RQ could leave behind. Tried: a job dequeued from a
    private queue as a worker dequeues it (moved to the queue's intermediate list), then the two calls RQ makes,
    counting the worker's round trips. Got: one round trip, then none; the worker BUSY on the job, the job
    STARTED by it with a start time, in the started registry with the worker's execution, out of the
    intermediate list."""
    from rq.job import JobStatus
    from rq.queue import Queue

    from imagejobs.worker import ImageWorker, TrustedJob
    from RedisConfig import SERIALIZER, connection

    redis = connection()
    q = queue("start-test", redis)
    worker = ImageWorker([q], connection=redis, serializer=SERIALIZER, job_class=TrustedJob)
    worker.register_birth()
    try:
        enqueued = q.enqueue("imagejobs.tasks.run_single", "size", "x.jpg", {})
        job, _ = Queue.dequeue_any([q], None, connection=redis, job_class=TrustedJob, serializer=SERIALIZER)
        assert job.id == enqueued.id and redis.lrange(q.intermediate_queue_key, 0, -1) == [job.id.encode()]
        trips = []
        real_pipeline = redis.pipeline

        def counted_pipeline(*args, **kwargs):
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute
            monkeypatch.setattr(pipe, "execute", lambda *a, **k: trips.append("pipeline") or real_execute(*a, **k))
            return pipe

        real_command = redis.execute_command
        monkeypatch.setattr(redis, "pipeline", counted_pipeline)
        monkeypatch.setattr(redis, "execute_command", lambda *a, **k: trips.append(a[0]) or real_command(*a, **k))
        worker.prepare_execution(job)
        assert trips == ["pipeline"]
        worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
        assert trips == ["pipeline"]
        monkeypatch.undo()

        assert redis.hget(worker.key, "state") == b"busy" and redis.hget(worker.key, "current_job") == job.id.encode()
        job.refresh()
        assert job.get_status() == JobStatus.STARTED and job.worker_name == worker.name and job.started_at
        assert job.id in q.started_job_registry.get_job_ids()
        assert worker.execution.id in [execution.id for execution in job.get_executions()]
        assert redis.lrange(q.intermediate_queue_key, 0, -1) == []
    finally:
        worker.register_death()
        q.empty()
        q.started_job_registry.cleanup()

"""Every route and error path of the API, through Flask's test client, with real workers and Redis behind it."""

import dataclasses
import io
import json
import os
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image as PILImage
from redis import Redis
from rq import Worker

from imagejobs import answers, batch, jobs
from imagejobs.actions import ACTIONS
from imagejobs.config import settings
from imagejobs.worker import ImageWorker
from RedisConfig import SERIALIZER, connection, queue
from tests.support import copy_sample, jpeg_bytes, rel, result_of, submit

PHOTO = "castle_image.jpg"


# --- size --------------------------------------------------------------------------------------------


def test_size_of_one_image_by_get(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    answer = client.get(f"/imageapi?imagePath={rel(folder / 'a.jpg', images_root)}")
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["status"] == "queued" and body["action"] == "size" and body["Result"].endswith(".")
    assert answer.headers["Location"] == f"/result/{body['jobId']}"
    done = result_of(client, body["jobId"])
    with PILImage.open(folder / "a.jpg") as image:
        assert done["result"] == {"width": image.width, "height": image.height, "format": "JPEG", "mode": image.mode}
    assert done["status"] == "finished" and done["action"] == "size"
    assert done["enqueuedAt"] <= done["startedAt"] <= done["endedAt"]


@pytest.mark.parametrize("how", ["query", "form", "json"])
def test_image_path_from_query_form_or_json_body(client, folder, images_root, how):
    copy_sample(PHOTO, folder / "a.jpg")
    values = {"imagePath": rel(folder / "a.jpg", images_root), "action": "size"}
    kwargs = {"query": {"query_string": values}, "form": {"data": values}, "json": {"json": values}}[how]
    body = submit(client, "POST", **kwargs)
    assert body["action"] == "size"
    assert result_of(client, body["jobId"])["result"]["format"] == "JPEG"


def test_image_path_absolute_inside_root_and_container_form(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    for given in (str(folder / "a.jpg"), f"/ImageResize/images/{rel(folder / 'a.jpg', images_root)}"):
        body = submit(client, "GET", query_string={"imagePath": given})
        assert result_of(client, body["jobId"])["status"] == "finished", given


# --- resize and the file route -------------------------------------------------------------------------


def test_resize_by_default_writes_mirrored_thumbnail_and_serves_it(client, folder, images_root):
    copy_sample(PHOTO, folder / "Japan" / "a.jpg")
    copy_sample("CogentLabs.jpg", folder / "Korea" / "a.jpg")
    first = submit(client, "POST", data={"imagePath": rel(folder / "Japan" / "a.jpg", images_root)})
    second = submit(client, "POST", data={"imagePath": rel(folder / "Korea" / "a.jpg", images_root)})
    assert first["action"] == "resize"
    made = [result_of(client, body["jobId"])["result"] for body in (first, second)]
    # the path a client can use: relative to the images root, never a server path
    assert made[0]["path"] == f"resized/{rel(folder, images_root)}/Japan/a_resized.jpg"
    assert made[0]["path"] != made[1]["path"]  # same name, two folders: two thumbnails
    for result in made:
        with PILImage.open(images_root / result["path"]) as thumb:
            assert thumb.size == (result["width"], result["height"]) and max(thumb.size) == 100
    download = client.get(f"/result/file?jobId={first['jobId']}")
    assert download.status_code == 200 and download.mimetype == "image/jpeg"
    assert f"filename={first['jobId']}.jpg" in download.headers["Content-Disposition"]
    assert download.data == (images_root / made[0]["path"]).read_bytes()


@pytest.mark.parametrize("fit, size", [("contain", (120, 90)), ("cover", (120, 40)), ("stretch", (120, 40))])
def test_resize_parameters(client, folder, images_root, fit, size):
    PILImage.new("RGB", (400, 300), "navy").save(folder / "wide.png")
    body = submit(
        client,
        "POST",
        json={
            "imagePath": rel(folder / "wide.png", images_root),
            "width": 120,
            "height": 40 if fit != "contain" else 120,
            "fit": fit,
            "format": "webp",
        },
    )
    result = result_of(client, body["jobId"])["result"]
    assert result["path"].endswith("wide_resized.webp")
    with PILImage.open(images_root / result["path"]) as thumb:
        assert thumb.format == "WEBP" and thumb.size == size


def test_file_route_answers_404_for_unknown_and_fileless_jobs(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    sized = submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})
    result_of(client, sized["jobId"])
    for job_id in (sized["jobId"], "no-such-job"):
        answer = client.get(f"/result/file?jobId={job_id}")
        assert answer.status_code == 404 and "error" in answer.get_json()


# --- bad input: a sentence naming the problem, nothing enqueued ------------------------------------------


@pytest.mark.parametrize(
    "values, named",
    [
        ({"width": "0"}, "width"),
        ({"width": "4097"}, "width"),
        ({"height": "abc"}, "height"),
        ({"width": "1.5"}, "width"),
        ({"fit": "squash"}, "fit"),
        ({"format": "tiff"}, "format"),
        ({"frames": "some"}, "frames"),
        ({"action": "explode"}, "action"),
        ({"recursive": "maybe"}, "recursive"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_enqueued(client, folder, images_root, values, named):
    copy_sample(PHOTO, folder / "a.jpg")
    before = queue("images").count, len(os.listdir(images_root))
    answer = client.post("/imageapi", data={"imagePath": rel(folder / "a.jpg", images_root), **values})
    # e.g. width=4097 -> 400
    # {"error": "Invalid parameter width: Input should be less than or equal to 4096 (got '4097')."}
    assert answer.status_code == 400
    assert named in answer.get_json()["error"]
    assert (queue("images").count, len(os.listdir(images_root))) == before


@pytest.mark.parametrize(
    "given", ["../outside.jpg", "/etc/passwd", "{folder}/../../outside.jpg", "{folder}/link-out/passwd"]
)
def test_paths_outside_the_root_are_refused(client, folder, images_root, given):
    (folder / "link-out").symlink_to("/etc")  # a symlink inside the root that leads out of it
    given = given.format(folder=rel(folder, images_root))
    answer = client.get("/imageapi", query_string={"imagePath": given})
    # e.g. /etc/passwd -> 400 "imagePath '/etc/passwd' is outside the images root; ..."; no server path in the answer
    assert answer.status_code == 400
    assert "outside the images root" in answer.get_json()["error"]
    assert str(images_root) not in answer.get_json()["error"]


def test_missing_path_and_missing_source(client, folder, images_root):
    answer = client.get("/imageapi", query_string={"imagePath": f"{rel(folder, images_root)}/nope.jpg"})
    assert answer.status_code == 404 and "Nothing is at imagePath" in answer.get_json()["error"]
    answer = client.post("/imageapi", data={})
    assert answer.status_code == 400 and "imagePath" in answer.get_json()["error"]


def test_empty_folder_is_refused(client, folder, images_root):
    (folder / "notes.txt").write_text("not an image")
    answer = client.get("/imageapi", query_string={"imagePath": rel(folder, images_root)})
    assert answer.status_code == 400 and "holds no images" in answer.get_json()["error"]


def test_json_body_must_be_an_object_and_other_bodies_are_unsupported(client):
    answer = client.post("/imageapi", data="[1, 2]", content_type="application/json")
    assert answer.status_code == 400 and "JSON body" in answer.get_json()["error"]
    answer = client.post("/imageapi", data="imagePath=x", content_type="text/plain")
    assert answer.status_code == 415 and "error" in answer.get_json()


def test_a_json_number_of_5000_digits_is_a_sentence_not_a_crash(client):
    """{"width": 99...9} with 5,000 nines was a 500: Python refuses to convert an integer of more than 4,300
    digits, and that ValueError, raised inside the JSON parser, had no position to report."""
    body = '{"imagePath": "a.jpg", "width": ' + "9" * 5000 + "}"
    answer = client.post("/imageapi", data=body, content_type="application/json")
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "The JSON body is not usable: a number in it has 5,000 digits (at most 30)."
    huge = client.post("/imageapi", data='{"imagePath": "a.jpg", "width": 1e999}', content_type="application/json")
    assert huge.status_code == 400 and "width" in huge.get_json()["error"]


def test_a_number_sent_as_a_json_string_is_told_apart(client):
    """JSON {"width": "300"} said only "Input should be a valid integer (got '300')", although 300 is one; JSON
    values carry their types (0 is no boolean), so the sentence says what to send instead."""
    answer = client.post("/imageapi", json={"imagePath": "a.jpg", "width": "300"})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "Invalid parameter width: in JSON, a number, not a string (got '300')."


# --- batches -------------------------------------------------------------------------------------------


def test_folder_batch_has_one_entry_per_image_and_bad_ones_fail_alone(client, folder, images_root):
    for index in range(6):
        copy_sample(PHOTO, folder / f"photo{index}.jpg")
    (folder / "fake.jpg").write_text("this is text, not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    (folder / "sub").mkdir()
    copy_sample(PHOTO, folder / "sub" / "deeper.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "width": "50", "height": "50"})
    done = result_of(client, body["jobId"])
    assert done["status"] == "finished"
    result = done["result"]
    assert (result["total"], result["done"], result["failed"]) == (8, 6, 2)  # the subfolder is not included
    by_name = {Path(entry["image"]).name: entry for entry in result["images"]}
    assert "not an image" in by_name["fake.jpg"]["error"]
    assert "empty" in by_name["empty.png"]["error"]
    assert by_name["photo3.jpg"]["result"]["width"] == 50


def test_recursive_folder_includes_subfolders(client, folder, images_root):
    copy_sample(PHOTO, folder / "top.jpg")
    copy_sample(PHOTO, folder / "sub" / "deeper.jpg")
    body = submit(client, "GET", query_string={"imagePath": rel(folder, images_root), "recursive": "true"})
    images = [entry["image"] for entry in result_of(client, body["jobId"])["result"]["images"]]
    assert images == [rel(folder / "sub" / "deeper.jpg", images_root), rel(folder / "top.jpg", images_root)]


def test_batch_progress_while_it_runs(folder, images_root, redis_url):
    """A batch on a queue no worker serves: queued with progress 0/N, then one chunk run by hand."""
    redis = Redis.from_url(redis_url)
    for index in range(10):
        copy_sample(PHOTO, folder / f"p{index}.jpg")
    images = [rel(folder / f"p{index}.jpg", images_root) for index in range(10)]
    unserved = dataclasses.replace(ACTIONS["size"], queue="progress-test")
    job = batch.enqueue(jobs.Submission(connection(), settings, "anonymous"), unserved, images, {}, jobs.new_job_id())
    status, body = answers.describe(connection(), jobs.fetch(connection(), job.id, settings.result_ttl))
    assert status == 202 and body["status"] == "queued"
    assert body["progress"] == {"done": 0, "failed": 0, "total": 10}
    worker = ImageWorker([queue("progress-test")], connection=redis, serializer=SERIALIZER)
    worker.work(burst=True, max_jobs=1)
    status, body = answers.describe(connection(), jobs.fetch(connection(), job.id, settings.result_ttl))
    assert status == 202 and body["status"] == "started" and body["startedAt"]
    assert 0 < body["progress"]["done"] < 10 and body["progress"]["total"] == 10
    worker.work(burst=True)
    status, body = answers.describe(connection(), jobs.fetch(connection(), job.id, settings.result_ttl))
    assert status == 200 and body["result"]["done"] == 10
    with pytest.raises(jobs.JobNotFound):  # chunks are internal
        jobs.fetch(connection(), f"{job.id}-0", settings.result_ttl)


# --- uploads -------------------------------------------------------------------------------------------


def test_one_upload_is_one_job_stored_under_uploads(client, images_root):
    body = submit(
        client, "POST", data={"image": (io.BytesIO(jpeg_bytes()), "café 東京.jpg")}, content_type="multipart/form-data"
    )
    stored = images_root / "uploads" / body["jobId"] / "café 東京.jpg"
    assert stored.is_file()
    result = result_of(client, body["jobId"])["result"]
    assert result["path"].endswith("café 東京_resized.jpg") and (result["width"], result["height"]) == (100, 75)


def test_several_uploads_make_one_batch_with_per_file_errors(client, images_root):
    files = [
        (io.BytesIO(jpeg_bytes()), "a.jpg"),
        (io.BytesIO(jpeg_bytes(color="red")), "a.jpg"),
        (io.BytesIO(b"%PDF-1.4 not an image"), "../../evil.jpg"),
    ]
    body = submit(client, "POST", data={"image": files, "action": "size"}, content_type="multipart/form-data")
    result = result_of(client, body["jobId"])["result"]
    names = [Path(entry["image"]).name for entry in result["images"]]
    assert names == ["a.jpg", "1-a.jpg", "evil.jpg"]  # distinct names; no path from the client survives
    assert (result["done"], result["failed"]) == (2, 1) and "not an image" in result["images"][2]["error"]
    assert all(entry["image"].startswith(f"uploads/{body['jobId']}/") for entry in result["images"])


def test_upload_in_the_wrong_field_or_with_a_path_is_refused(client, folder, images_root):
    answer = client.post(
        "/imageapi", data={"file": (io.BytesIO(jpeg_bytes()), "a.jpg")}, content_type="multipart/form-data"
    )
    assert answer.status_code == 400 and "'image'" in answer.get_json()["error"]
    copy_sample(PHOTO, folder / "a.jpg")
    answer = client.post(
        "/imageapi",
        data={"image": (io.BytesIO(jpeg_bytes()), "b.jpg"), "imagePath": rel(folder / "a.jpg", images_root)},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 400 and "one way" in answer.get_json()["error"]


def test_oversize_upload_gets_413(app, client):
    limit = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 1000
    try:
        answer = client.post(
            "/imageapi", data={"image": (io.BytesIO(b"x" * 5000), "big.jpg")}, content_type="multipart/form-data"
        )
    finally:
        app.config["MAX_CONTENT_LENGTH"] = limit
    assert answer.status_code == 413 and "MAX_UPLOAD_MB" in answer.get_json()["error"]


# --- failures and results ------------------------------------------------------------------------------


def test_a_bad_single_image_fails_with_a_sentence_and_no_retry(client, folder, images_root):
    (folder / "text.jpg").write_text("hello")
    body = submit(client, "GET", query_string={"imagePath": rel(folder / "text.jpg", images_root)})
    done = result_of(client, body["jobId"])
    # a text file named .jpg -> 200 {"status": "failed", "error": "<path>: The file is not an image ..."}
    assert done["status"] == "failed"
    assert "not an image" in done["error"] and "Traceback" not in done["error"]
    job = jobs.fetch(connection(), body["jobId"], settings.result_ttl)
    assert job.retries_left == 0  # a bad image is not retried


def test_unknown_jobs_are_404_in_both_forms(client):
    for url in ("/result/nope", "/result?jobId=nope", "/result?jobId=../../etc", "/result/file?jobId=a%20b"):
        answer = client.get(url)
        assert answer.status_code == 404 and "expired" in answer.get_json()["error"]
    answer = client.get("/result")
    assert answer.status_code == 400 and "jobId" in answer.get_json()["error"]


def test_wait_must_be_0_to_30(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    body = submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})
    answer = client.get(f"/result/{body['jobId']}?wait=31")
    assert answer.status_code == 400 and "wait" in answer.get_json()["error"]


def test_submit_with_wait_answers_the_result_in_one_request(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    answer = client.post(
        "/imageapi", data={"action": "size", "imagePath": rel(folder / "a.jpg", images_root), "wait": "20"}
    )
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["status"] == "finished" and body["result"]["format"] == "JPEG"
    assert answer.headers["Location"] == f"/result/{body['jobId']}"
    assert client.get(answer.headers["Location"]).get_json() == body  # the same answer GET /result gives


def test_submit_with_wait_on_a_failing_image_answers_its_error(client, folder, images_root):
    (folder / "bad.jpg").write_bytes(b"not an image")
    answer = client.get(f"/imageapi?imagePath={rel(folder / 'bad.jpg', images_root)}&wait=20")
    assert answer.status_code == 200 and answer.get_json()["status"] == "failed"
    assert "bad.jpg" in answer.get_json()["error"]


def test_submit_with_wait_that_runs_out_answers_202(client, folder, images_root):
    """The test workers serve only the images queue, so a classify job stays queued: the wait runs out."""
    copy_sample(PHOTO, folder / "a.jpg")
    answer = client.post(f"/imageapi?action=classify&wait=0.3&imagePath={rel(folder / 'a.jpg', images_root)}")
    assert answer.status_code == 202 and answer.get_json()["status"] == "queued"
    queue("classify").remove(answer.get_json()["jobId"])


@pytest.mark.parametrize("wait", ["31", "-1", "soon"])
def test_submit_refuses_a_bad_wait_and_queues_nothing(client, folder, images_root, wait):
    copy_sample(PHOTO, folder / "a.jpg")
    before = queue("images").count
    answer = client.post("/imageapi", data={"imagePath": rel(folder / "a.jpg", images_root), "wait": wait})
    assert answer.status_code == 400 and "wait" in answer.get_json()["error"], answer.get_json()
    assert queue("images").count <= before  # nothing was queued (workers may have taken older jobs meanwhile)


def test_results_are_kept_result_ttl_seconds(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    body = submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})
    result_of(client, body["jobId"])
    assert settings.result_ttl - 5 < connection().ttl(f"rq:job:{body['jobId']}") <= settings.result_ttl


def test_job_arguments_are_stored_as_json_not_pickle(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    body = submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})
    result_of(client, body["jobId"])
    stored = zlib.decompress(connection().hget(f"rq:job:{body['jobId']}", "data"))  # RQ compresses job data
    assert json.loads(stored)[0] == "imagejobs.tasks.run_single"


# --- routes for operators, and errors as JSON ------------------------------------------------------------


def test_health_reports_redis_workers_and_queues(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["redis"] == "ok" and body["workers"] >= 2 and set(body["queues"]) >= {"images", "classify"}


def test_workers_stay_registered_while_they_wait_for_work(client, folder, images_root):
    """After a job, a worker's key must outlive its block waiting for the next one (WORKER_TTL - 15 s): RQ
    gives the key only JOB_HEARTBEAT_TTL as a job starts, and a key that expires gets a live worker dropped
    from the registry (GET /health then counts one worker fewer)."""
    copy_sample(PHOTO, folder / "a.jpg")
    for _ in range(4):  # enough jobs to reach both workers
        result_of(
            client, submit(client, "GET", query_string={"imagePath": rel(folder / "a.jpg", images_root)})["jobId"]
        )
    redis = connection()
    deadline = time.monotonic() + 5  # each worker renews its key right after its job
    while min(redis.ttl(worker.key) for worker in Worker.all(connection=redis)) <= settings.worker_ttl - 15:
        assert time.monotonic() < deadline, {
            worker.name: redis.ttl(worker.key) for worker in Worker.all(connection=redis)
        }
        time.sleep(0.1)


def test_metrics_in_prometheus_text_format(client):
    client.get("/health")
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    text = answer.get_data(as_text=True)
    assert 'imageapi_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'imageapi_queue_depth{queue="images"}' in text and "imageapi_workers" in text


@pytest.mark.parametrize(
    "method, query, data, said",
    [
        (
            "GET",
            {"imagePath": "a.jpg", "width": "50"},
            None,
            "GET /imageapi runs size, which does not use it; width is for resize",
        ),
        (
            "POST",
            {"action": "classify"},
            {"imagePath": "a.jpg", "fit": "cover"},
            "runs classify, which does not use it; fit is for resize",
        ),
        (
            "POST",
            {},
            {"imagePath": "a.jpg", "top": "3"},
            "POST /imageapi runs resize, which does not use it; top is for classify",
        ),
    ],
)
def test_a_parameter_of_another_action_is_named_not_dropped(client, method, query, data, said):
    """GET /imageapi?imagePath=demo/castle_image.jpg&width=50 answered a size and dropped width without a word,
    while a misspelt widht got a 400: a parameter the chosen action does not use is a 400 that says whose it is."""
    answer = client.open("/imageapi", method=method, query_string=query, data=data)
    assert answer.status_code == 400 and said in answer.get_json()["error"]


@pytest.mark.parametrize(
    ("method", "data", "said"),
    [
        ("GET", {"gravity": "smart"}, "GET /imageapi runs size, which does not use it; gravity is for resize"),
        ("POST", {"gravity": "smart"}, "Invalid parameter gravity: it needs fit=cover (got 'smart')."),
        ("POST", {"fit": "stretch", "focus": "0.1,0.5"}, "Invalid parameter focus: it needs fit=cover"),
        ("POST", {"fit": "cover", "focus": "0.1"}, "focus is x,y: two fractions from 0 to 1"),
        ("POST", {"fit": "cover", "focus": "1.5,nan"}, "focus is x,y: two fractions from 0 to 1"),
        ("POST", {"fit": "cover", "focus": ",".join(["0.5"] * 20)}, "focus is x,y"),
        ("POST", {"fit": "cover", "gravity": "middle"}, "Invalid parameter gravity: Input should be 'center'"),
    ],
)
def test_crop_placements_are_checked_and_their_refusals_say_why(client, method, data, said):
    """Tried: gravity on a size job (GET), gravity and focus with a fit that does not crop (they would have been
    dropped without a word), focus with one number, with 1.5 and nan, 40 numbers, and an unknown gravity. Got:
    each a 400 naming the parameter and what it needs; nothing queued."""
    answer = client.open("/imageapi", method=method, query_string={"imagePath": "demo/castle_image.jpg", **data})
    assert answer.status_code == 400 and said in answer.get_json()["error"], answer.get_json()


def test_a_cover_with_focus_or_gravity_keeps_that_part(client, folder, images_root):
    """Tried: a 1200x400 photo, its left third red, the rest grey, covered into 100x100 with focus=0.1,0.5,
    gravity=west, gravity=smart and the default centre. Got: red thumbnails for the first three (the crop at
    the left edge), a grey one for the centre; each entry with its placeholder."""
    source = PILImage.new("RGB", (1200, 400), (128, 128, 128))
    source.paste((220, 30, 30), (0, 0, 400, 400))
    source.save(folder / "wide.jpg", quality=95)
    place = rel(folder / "wide.jpg", images_root)
    colours = {}
    for name, extra in {
        "focus": {"focus": "0.1,0.5"},
        "west": {"gravity": "west"},
        "smart": {"gravity": "smart"},
        "center": {},
    }.items():
        body = {"imagePath": place, "width": 100, "height": 100, "fit": "cover", "format": "png", **extra}
        done = result_of(client, submit(client, "POST", json=body)["jobId"])
        result = done["result"]
        assert (result["width"], result["height"]) == (100, 100) and len(result["placeholder"]) == 28
        with PILImage.open(images_root / result["path"]) as made:
            colours[name] = made.convert("RGB").getpixel((50, 50))
    assert all(colours[name][0] > 180 and colours[name][1] < 80 for name in ("focus", "west", "smart")), colours
    assert max(colours["center"]) - min(colours["center"]) < 10, colours


def test_near_misses_get_a_suggestion(client, folder, images_root):
    """action=resise and imagePath=holidays (beside a holiday folder) listed the choices or said nothing was
    there, and suggested nothing; thumbnail, the page's name for resize, was refused."""
    (folder / "holiday").mkdir()
    copy_sample(PHOTO, folder / "holiday" / "a.jpg")
    place = rel(folder, images_root)
    answer = client.post("/imageapi", data={"imagePath": f"{place}/holidays"})
    assert answer.status_code == 404 and answer.get_json()["error"].endswith(f"Did you mean '{place}/holiday'?")
    answer = client.post("/imageapi", data={"imagePath": f"{place}/holiday", "action": "resise"})
    assert answer.status_code == 400 and answer.get_json()["error"].endswith("did you mean 'resize'?")
    answer = client.post("/imageapi", data={"imagePath": f"{place}/holiday", "action": "thumbnail", "wait": "20"})
    assert answer.status_code == 200 and answer.get_json()["action"] == "resize"


def test_the_outside_the_root_error_shows_a_path_of_this_root(client, folder, images_root):
    """It said "like Japan/a.jpg", a folder no root here has; it now names an image of the root's own."""
    copy_sample(PHOTO, folder / "a.jpg")
    answer = client.post("/imageapi", data={"imagePath": "../../etc/passwd"})
    said = answer.get_json()["error"]
    example = said.rsplit("like ", 1)[1].rstrip(".")
    assert answer.status_code == 400 and (images_root / example).is_file() and "Japan" not in said


def test_unknown_route_and_wrong_method_answer_json(client):
    """An unknown route points at /docs, which lists the routes (it said "see / for the routes", and / is the
    page, which does not)."""
    answer = client.get("/nowhere")
    assert answer.status_code == 404 and answer.get_json() == {"error": "No route /nowhere; /docs lists the routes."}
    assert client.get("/docs").status_code == 200
    answer = client.delete("/imageapi")
    assert answer.status_code == 405 and "DELETE" in answer.get_json()["error"]


def test_redis_down_answers_503_json(configured):
    client = configured(redis_url="redis://127.0.0.1:9/0")  # nothing listens on port 9
    answer = client.get("/health")
    assert answer.status_code == 503 and answer.get_json()["redis"] == "unreachable"
    answer = client.get("/result/some-job")
    assert answer.status_code == 503 and "Redis is unreachable" in answer.get_json()["error"]


def test_browsing_folders_stays_inside_the_root(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    (folder / "notes.txt").write_text("not listed")
    (folder / "sub").mkdir()
    (folder / "out").symlink_to("/etc")
    answer = client.get("/images", query_string={"path": rel(folder, images_root)})
    assert answer.status_code == 200
    listing = answer.get_json()
    assert listing == {"path": rel(folder, images_root), "folders": ["sub"], "images": ["a.jpg"], "outputs": []}
    assert client.get("/images").get_json()["path"] == "."
    for outside in ("..", "/etc", f"{rel(folder, images_root)}/out"):
        answer = client.get("/images", query_string={"path": outside})
        assert answer.status_code == 400 and "outside the images root" in answer.get_json()["error"], outside
    assert client.get("/images", query_string={"path": rel(folder / "a.jpg", images_root)}).status_code == 400
    assert client.get("/images", query_string={"path": "no/such/folder"}).status_code == 404


@pytest.mark.parametrize("action", [{}, [], 3, None])
def test_an_action_that_is_not_a_string_is_refused(client, action):
    # {"action": {}} in a JSON body once fell back to the default action (schemathesis found it) -> now 400
    answer = client.post("/imageapi", json={"action": action, "imagePath": "x.jpg"})
    assert answer.status_code == (404 if action is None else 400)  # null means "not given": the default, then no x.jpg
    if action is not None:
        assert "action" in answer.get_json()["error"]


def test_a_batch_entry_thumbnail_downloads_by_index(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    (folder / "b.jpg").write_text("not an image")
    copy_sample("jemma.png", folder / "c.png")
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "width": "40", "height": "40"})
    entries = result_of(client, body["jobId"])["result"]["images"]
    download = client.get(f"/result/file?jobId={body['jobId']}&index=2")
    assert download.status_code == 200 and download.mimetype == "image/png"
    assert f"filename={body['jobId']}-2.png" in download.headers["Content-Disposition"]
    assert download.data == (images_root / entries[2]["result"]["path"]).read_bytes()
    for index, status in (("1", 404), ("3", 404), ("-1", 400), ("x", 400)):  # failed entry, past the end, malformed
        assert client.get(f"/result/file?jobId={body['jobId']}&index={index}").status_code == status, index
    # without index: every thumbnail of the batch in one zip, each named by its path under resized/
    archive = client.get(f"/result/file?jobId={body['jobId']}")
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    assert f'filename="{body["jobId"]}.zip"' in archive.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(archive.data)) as opened:
        names = opened.namelist()
        assert names == [f"{rel(folder, images_root)}/a_resized.jpg", f"{rel(folder, images_root)}/c_resized.png"]
        assert opened.read(names[1]) == (images_root / entries[2]["result"]["path"]).read_bytes()


def test_a_batch_that_made_no_files_has_no_zip(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    copy_sample(PHOTO, folder / "b.jpg")
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "action": "size"})
    result_of(client, body["jobId"])
    answer = client.get(f"/result/file?jobId={body['jobId']}")
    assert answer.status_code == 404 and "made no files" in answer.get_json()["error"]


def test_an_overlong_value_is_not_echoed_back_whole(client):
    # Tried: a 5,000-character callbackUrl. Before: the 400 repeated all of it. Now: its first 100 and its length.
    answer = client.post("/imageapi", data={"imagePath": "a.jpg", "callbackUrl": "http://a/" + "x" * 4991})
    error = answer.get_json()["error"]
    assert answer.status_code == 400 and "callbackUrl" in error and "(5000 characters)" in error and len(error) < 300


# --- every photo format, through real workers --------------------------------------------------------------


def animation_bytes(fmt: str, count: int = 4, size=(64, 48)) -> bytes:
    """count frames in red, lime, blue and yellow by turns, 100-400 ms, looping forever."""
    colours, durations = ("red", "lime", "blue", "yellow"), [100, 200, 300, 400]
    frames = [PILImage.new("RGB", size, colours[index % 4]) for index in range(count)]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, fmt, save_all=True, append_images=frames[1:], duration=[durations[i % 4] for i in range(count)], loop=0
    )
    return buffer.getvalue()


def durations_of(path: Path) -> list:
    with PILImage.open(path) as img:
        found = []
        for index in range(img.n_frames):
            img.seek(index)
            img.load()
            found.append(img.info.get("duration"))
        return found


def every_format(folder: Path) -> None:
    """One file of every format the service reads, animations, and hostile ones, in folder."""
    with PILImage.open(Path(__file__).parent / "testdata" / PHOTO) as photo:
        photo.save(folder / "photo.heic", quality=80)
        photo.save(folder / "photo.avif", quality=80)
        photo.save(folder / "photo.jxl", quality=80)
        for name, fmt in (("photo.png", "PNG"), ("photo.webp", "WEBP"), ("photo.bmp", "BMP"), ("photo.tif", "TIFF")):
            photo.save(folder / name, fmt)
        photo.convert("P").save(folder / "still.gif")
    copy_sample(PHOTO, folder / "photo.jpg")
    for name, fmt in (("moving.gif", "GIF"), ("moving.webp", "WEBP"), ("moving.png", "PNG")):
        (folder / name).write_bytes(animation_bytes(fmt))
    (folder / "many.gif").write_bytes(animation_bytes("GIF", count=1001, size=(8, 8)))
    for name in ("photo.heic", "photo.avif"):
        data = (folder / name).read_bytes()
        (folder / f"half-{name}").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image: not listed")


def test_a_folder_of_every_format_is_one_batch(client, folder, images_root):
    """Tried: one folder holding a JPEG, PNG, WebP, AVIF, HEIC, JPEG XL, BMP and TIFF of the same photo, a still
    GIF, animated GIF, WebP and APNG (4 frames, 100-400 ms), a 1,001-frame GIF, half an AVIF and half a HEIC, and
    a text file; one resize request, 50x50. Got: one batch of 15 images (the text file not listed); each photo's
    thumbnail 50x30 in its format family (HEIC and JPEG XL as JPEG, BMP and TIFF as PNG); each animation
    animated in its own format with its 4 durations and "frames": 4; the 1,001-frame GIF's entry says
    MAX_FRAMES; the halves are "truncated or corrupt" (half an AVIF: "not an image", libavif cannot even
    parse it). A size job on the animated GIF says "frames": 4; the thumbnails are served with their media
    types."""
    every_format(folder)
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "width": "50", "height": "50"})
    done = result_of(client, body["jobId"])
    entries = {Path(entry["image"]).name: entry for entry in done["result"]["images"]}
    assert len(entries) == 15 and "notes.txt" not in entries
    formats = {"photo.jpg": "JPEG", "photo.png": "PNG", "photo.webp": "WEBP", "photo.avif": "AVIF"}
    formats |= {"photo.heic": "JPEG", "photo.jxl": "JPEG", "photo.bmp": "PNG", "photo.tif": "PNG", "still.gif": "PNG"}
    for name, written in formats.items():
        assert entries[name]["result"] | {"path": None, "placeholder": None} == {
            "path": None,
            "placeholder": None,
            "width": 50,
            "height": 30,
            "format": written,
        }, name
    for name, written in (("moving.gif", "GIF"), ("moving.webp", "WEBP"), ("moving.png", "PNG")):
        result = entries[name]["result"]
        assert (result["format"], result["frames"], result["width"], result["height"]) == (written, 4, 50, 38)
        assert durations_of(images_root / result["path"]) == [100, 200, 300, 400]
    assert entries["many.gif"]["error"] == (
        "The animation has 1,001 frames, more than the limit of 1,000 (MAX_FRAMES); "
        "frames=first makes a still of its first frame."
    )
    for name in ("half-photo.heic", "half-photo.avif"):
        assert entries[name]["error"] in (
            "The image data is truncated or corrupt.",
            "The file is not an image Pillow can read (JPEG, PNG, WebP, AVIF, HEIC, JPEG XL, GIF, BMP or TIFF).",
        ), name
    served = client.get(f"/images/file?path={entries['photo.avif']['result']['path']}")
    assert served.status_code == 200 and served.mimetype == "image/avif"
    assert client.get(f"/images/file?path={rel(folder / 'photo.heic', images_root)}").mimetype == "image/heic"
    sized = submit(client, "GET", query_string={"imagePath": rel(folder / "moving.gif", images_root)})
    assert result_of(client, sized["jobId"])["result"] == {
        "width": 64,
        "height": 48,
        "format": "GIF",
        "mode": "P",
        "frames": 4,
    }


def test_format_avif_frames_first_and_a_heic_upload(client, folder, images_root):
    """format=avif turns the JPEG into an AVIF of the right size; frames=first makes a still PNG of an animated
    GIF; an uploaded .heic (as an iPhone sends it) is thumbnailed into a JPEG."""
    copy_sample(PHOTO, folder / "photo.jpg")
    (folder / "moving.gif").write_bytes(animation_bytes("GIF"))
    made = submit(client, "POST", data={"imagePath": rel(folder / "photo.jpg", images_root), "format": "avif"})
    result = result_of(client, made["jobId"])["result"]
    with PILImage.open(images_root / result["path"]) as thumb:
        assert thumb.format == "AVIF" and thumb.size == (result["width"], result["height"]) == (100, 60)
    still = submit(client, "POST", data={"imagePath": rel(folder / "moving.gif", images_root), "frames": "first"})
    assert result_of(client, still["jobId"])["result"]["format"] == "PNG"
    heic = io.BytesIO()
    with PILImage.open(folder / "photo.jpg") as photo:
        photo.save(heic, "HEIF")
    uploaded = submit(
        client,
        "POST",
        data={"image": (io.BytesIO(heic.getvalue()), "IMG_0001.HEIC")},
        content_type="multipart/form-data",
    )
    result = result_of(client, uploaded["jobId"])["result"]
    assert result["path"].endswith("IMG_0001_resized.jpg") and (result["width"], result["height"]) == (100, 60)

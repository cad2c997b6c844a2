"""The classify action through the whole service: the API queues it, the classify worker (`python worker.py
classify`, as the containers and run.py start it) runs EfficientNet-Lite0 with its real ImageNet weights."""

import os
import subprocess
import sys
import time

import pytest
from PIL import Image as PILImage
from rq import Worker

from RedisConfig import CLASSIFY_QUEUE, connection, queue
from tests.support import ROOT, copy_sample, rel, result_of, start_process, stop_processes, submit


def start_classifier(env: dict | None = None) -> subprocess.Popen:
    process = start_process([sys.executable, "worker.py", "classify"], env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120  # the first load on a machine converts the model to TFLite (~20 s)
    while Worker.count(connection=connection(), queue=queue(CLASSIFY_QUEUE)) < 1:
        assert process.poll() is None and time.monotonic() < deadline, "the classify worker did not start"
        time.sleep(0.05)
    return process


# This test runs first in the module, while no other classify worker is up (the fixture below starts one later).
def test_a_missing_model_fails_the_job_with_what_to_set(client, folder, images_root):
    (folder / "labels.txt").write_text("cat\ndog\n")
    bad = start_classifier(
        {"CLASSIFIER_MODEL": str(folder / "nope.keras"), "CLASSIFIER_LABELS": str(folder / "labels.txt")}
    )
    try:
        copy_sample("castle_image.jpg", folder / "castle.jpg")
        body = submit(client, "POST", data={"action": "classify", "imagePath": rel(folder / "castle.jpg", images_root)})
        done = result_of(client, body["jobId"])
        # CLASSIFIER_MODEL names a missing file -> 200 {"status": "failed", "error": "... CLASSIFIER_MODEL ..."}
        assert done["status"] == "failed" and "CLASSIFIER_MODEL" in done["error"]
        assert bad.poll() is None  # nothing crashed
    finally:
        stop_processes([bad])


@pytest.fixture(scope="module")
def classifier_worker():
    process = start_classifier()
    yield process
    stop_processes([process])


def test_the_castle_photo_is_a_castle(client, classifier_worker, folder, images_root):
    copy_sample("castle_image.jpg", folder / "castle.jpg")
    body = submit(
        client,
        "POST",
        query_string={"action": "classify", "top": "3"},
        data={"imagePath": rel(folder / "castle.jpg", images_root)},
    )
    done = result_of(client, body["jobId"])
    assert done["status"] == "finished" and done["action"] == "classify"
    result = done["result"]
    assert result["model"] == "efficientnet-lite0" and len(result["predictions"]) == 3
    assert result["predictions"][0]["label"] == "castle" and result["predictions"][0]["score"] == pytest.approx(
        0.52, abs=0.05
    )
    scores = [prediction["score"] for prediction in result["predictions"]]
    assert scores == sorted(scores, reverse=True)


def test_a_folder_gives_per_image_predictions_and_errors(client, classifier_worker, folder, images_root):
    copy_sample("castle_image.jpg", folder / "castle.jpg")
    copy_sample("jemma.png", folder / "jemma.png")
    (folder / "notes.jpg").write_text("not a photo")
    (folder / "empty.png").write_bytes(b"")
    body = submit(client, "POST", data={"action": "classify", "imagePath": rel(folder, images_root)})
    result = result_of(client, body["jobId"])["result"]
    assert (result["total"], result["done"], result["failed"]) == (4, 2, 2)
    by_name = {entry["image"].rsplit("/", 1)[1]: entry for entry in result["images"]}
    assert by_name["castle.jpg"]["result"]["predictions"][0]["label"] == "castle"
    assert by_name["jemma.png"]["result"]["predictions"][0]["label"] == "beagle"
    assert len(by_name["jemma.png"]["result"]["predictions"]) == 5
    assert "not an image" in by_name["notes.jpg"]["error"] and "empty" in by_name["empty.png"]["error"]


@pytest.mark.parametrize("top", ["0", "21", "five"])
def test_top_is_1_to_20(client, folder, images_root, top):
    copy_sample("castle_image.jpg", folder / "castle.jpg")
    before = queue(CLASSIFY_QUEUE).count
    answer = client.post(
        "/imageapi", data={"action": "classify", "top": top, "imagePath": rel(folder / "castle.jpg", images_root)}
    )
    # top=21 -> 400 "Invalid parameter top: Input should be less than or equal to 20 (got '21')."
    assert answer.status_code == 400 and "top" in answer.get_json()["error"]
    assert queue(CLASSIFY_QUEUE).count == before


def test_the_api_and_image_workers_never_import_the_model_libraries():
    code = (
        "import sys, RestAPI, imagejobs.tasks, worker; "
        "heavy = {'tensorflow', 'keras', 'ai_edge_litert', 'imagejobs.classifier'}; "
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules} | heavy & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_heic_and_avif_photos_classify(client, classifier_worker, folder, images_root):
    """HEIC could not be read at all. The castle photo saved as HEIC (as an iPhone would) and as AVIF, in one
    folder: both are "castle", with scores near the JPEG's (0.52; the encodings change a few pixels)."""
    with PILImage.open(ROOT / "testdata" / "castle_image.jpg") as photo:
        photo.save(folder / "castle.heic", quality=90)
        photo.save(folder / "castle.avif", quality=90)
    body = submit(client, "POST", data={"action": "classify", "imagePath": rel(folder, images_root)})
    result = result_of(client, body["jobId"])["result"]
    assert result["done"] == 2
    for entry in result["images"]:
        best = entry["result"]["predictions"][0]
        assert best["label"] == "castle" and best["score"] == pytest.approx(0.52, abs=0.1), entry["image"]

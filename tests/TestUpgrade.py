"""An upgrade with jobs still queued: RQ stores each job's function by its import path, and the release
before the imagejobs package wrote `tasks.run_single`, `tasks.run_chunk`, `tasks.finish_batch` and
the failure callback `tasks.on_failure`. Its jobs, written here into Redis exactly as it wrote them,
run on today's workers (docs/operations.md, "Upgrading")."""

from rq import Callback
from rq.job import JobStatus

from imagejobs.jobs import new_job_id
from RedisConfig import connection, queue
from tests.support import copy_sample, rel, result_of

PHOTO = "castle_image.jpg"


def old_options(job_id: str, action: str, kind: str, **meta) -> dict:
    """The options the old release gave its jobs (jobs._options then)."""
    return {
        "job_id": job_id,
        "result_ttl": 500,
        "failure_ttl": 500,
        "timeout": 600,
        "on_failure": Callback("tasks.on_failure"),
        "meta": {"action": action, "kind": kind, **meta},
    }


def test_a_single_job_the_old_release_queued_runs(client, folder, images_root):
    copy_sample(PHOTO, folder / "a.jpg")
    q = queue("images")
    job = q.enqueue_job(
        q.create_job(
            "tasks.run_single",
            args=("size", rel(folder / "a.jpg", images_root), {}),
            **old_options(new_job_id(), "size", "single"),
        )
    )
    done = result_of(client, job.id)
    assert done["status"] == "finished" and done["result"]["format"] == "JPEG"


def test_a_bad_image_in_an_old_job_fails_with_its_sentence_and_no_retry(client, folder, images_root):
    (folder / "notes.jpg").write_text("not a photo")
    q = queue("images")
    job = q.enqueue_job(
        q.create_job(
            "tasks.run_single",
            args=("size", rel(folder / "notes.jpg", images_root), {}),
            retry=None,
            **old_options(new_job_id(), "size", "single"),
        )
    )
    done = result_of(client, job.id)
    assert done["status"] == "failed" and "not an image" in done["error"]  # the old callback name still explains it


def test_a_batch_the_old_release_queued_runs_to_its_result(client, folder, images_root):
    """The old release's batch: its record, a batch job created but not queued, and two chunks."""
    for index in range(4):
        copy_sample(PHOTO, folder / f"p{index}.jpg")
    images = [rel(folder / f"p{index}.jpg", images_root) for index in range(4)]
    batch_id, q, redis = new_job_id(), queue("images"), connection()
    redis.hset(f"imagejob:batch:{batch_id}", mapping={"total": 4, "chunks": 2})
    batch_job = q.create_job(
        "tasks.finish_batch",
        args=(batch_id, images),
        status=JobStatus.CREATED,
        **old_options(batch_id, "resize", "batch", total=4),
    )
    batch_job.origin = q.name
    batch_job.save()
    for number, start in enumerate((0, 2)):
        q.enqueue_job(
            q.create_job(
                "tasks.run_chunk",
                args=(batch_id, "resize", number, start, images[start : start + 2], {}),
                **old_options(f"{batch_id}-{number}", "resize", "chunk", batch=batch_id, chunk=number),
            )
        )
    done = result_of(client, batch_id)
    assert done["status"] == "finished" and done["result"]["done"] == 4
    assert [entry["image"] for entry in done["result"]["images"]] == images

"""A batch, whole: one job the user sees (a folder, several uploads or URLs) and the chunk jobs that do
the work, from its creation by the API to its last entry.

The batch job is created without being queued; its chunks (up to CHUNK_SIZE images each) are queued
and spread across every worker. Each image's entry is stored by its index, so a chunk that runs twice
(its worker died and RQ retried it) overwrites its own entries instead of counting them again:
progress can never double-count. The chunk that ends last (or fails for good) queues the batch job,
which gathers the entries into the result.

  enqueue(...)        the API: the batch job, its record and its chunks, in one transaction
  run_chunk(...)      a worker: one chunk's images, each entry recorded as it is made
  finish(...)         a worker: the batch job itself, once every chunk has ended
  progress, started_at  what GET /result shows while it runs

Keys, all expiring with the batch:
  imagejob:batch:<id>          hash: total, chunks, startedAt
  imagejob:batch:<id>:entries  hash: image index -> entry JSON ({"image", "result"} or {"image", "error"})
  imagejob:batch:<id>:failed   set of indexes whose entry is an error
  imagejob:batch:<id>:chunks   set of chunk numbers that have ended
"""

import json
import logging
import math
import time
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Worker, get_current_job
from rq.job import Job, JobStatus

from imagejobs import jobs, tasks
from imagejobs.actions import ACTIONS, Action
from imagejobs.config import settings as worker_settings
from RedisConfig import SERIALIZER, queue

log = logging.getLogger(__name__)

# Long enough for a batch of thousands of images to run; the finished result then lives RESULT_TTL.
BATCH_KEY_TTL = 7 * 24 * 3600
# Fewer images than this per chunk and RQ's per-job cost (~10 ms) starts to weigh against ~10 ms per thumbnail.
MIN_CHUNK = 4
PARTS = ("", "entries", "failed", "chunks")


def _key(batch_id: str, part: str = "") -> str:
    return f"imagejob:batch:{batch_id}" + (f":{part}" if part else "")


# --- creating it (the API) ----------------------------------------------------------------------------


def chunk_size(total: int, workers: int, most: int) -> int:
    """Images per chunk: about four chunks per worker, so every worker gets work and a slow
    chunk does not hold up the end, but never so small that per-job overhead dominates."""
    per_chunk = math.ceil(total / (4 * max(workers, 1)))
    return max(1, min(most, max(MIN_CHUNK, per_chunk)))


def enqueue(submission: jobs.Submission, action: Action, images: list[str], params: dict, job_id: str) -> Job:
    """The batch job (created, not yet queued), its record and its chunks (queued), written in one transaction."""
    redis, settings = submission.redis, submission.settings
    q = queue(action.queue, redis)
    size = chunk_size(len(images), Worker.count(connection=redis, queue=q), settings.chunk_size)
    batch_job = q.create_job(
        finish,
        args=(job_id, images),
        status=JobStatus.CREATED,
        **jobs.options(submission, job_id, action.name, jobs.BATCH, tasks.on_failure, total=len(images)),
    )
    batch_job.origin = q.name
    chunks = [
        Queue.prepare_data(
            run_chunk,
            (job_id, action.name, number, start, images[start : start + size], params),
            **jobs.options(
                submission, f"{job_id}-{number}", action.name, jobs.CHUNK, on_chunk_failure, batch=job_id, chunk=number
            ),
        )
        for number, start in enumerate(range(0, len(images), size))
    ]
    with redis.pipeline() as pipe:
        pipe.hset(_key(job_id), mapping={"total": len(images), "chunks": len(chunks)})
        pipe.expire(_key(job_id), BATCH_KEY_TTL)
        batch_job.save(pipeline=pipe)
        chunk_jobs = q.enqueue_many(chunks, pipeline=pipe)
        jobs.commit_unless_full(
            pipe,
            q,
            chunk_jobs,
            settings.max_queue_depth,
            created=(batch_job,),
            keys=tuple(_key(job_id, part) for part in PARTS),
        )
    return batch_job


# --- running it (the workers) -------------------------------------------------------------------------


def run_chunk(batch_id: str, action: str, chunk: int, offset: int, images: list[str], params: dict) -> dict:
    """Part of a batch: each image's entry goes to the batch record as it is made."""
    work = tasks.current_work(images, params, batch_id)
    redis = work.redis
    redis.hsetnx(_key(batch_id), "startedAt", _now())
    started = time.perf_counter()
    failed = 0
    for index, entry in enumerate(ACTIONS[action].process(work), start=offset):
        record(redis, batch_id, index, entry)
        failed += "error" in entry
    log.info(
        "%s chunk %d of batch %s: %d images, %d failed, in %.1f ms",
        action,
        chunk,
        batch_id,
        len(images),
        failed,
        1000 * (time.perf_counter() - started),
    )
    end_chunk(redis, batch_id, chunk)
    return {"images": len(images), "failed": failed}


def record(redis: Redis, batch_id: str, index: int, entry: dict) -> None:
    """Store one image's entry; idempotent, so a re-run chunk rewrites rather than adds."""
    with redis.pipeline() as pipe:
        pipe.hset(_key(batch_id, "entries"), str(index), json.dumps(entry))
        if "error" in entry:
            pipe.sadd(_key(batch_id, "failed"), index)
        else:
            pipe.srem(_key(batch_id, "failed"), index)
        for part in ("entries", "failed"):
            pipe.expire(_key(batch_id, part), BATCH_KEY_TTL)
        pipe.execute()


def end_chunk(redis: Redis, batch_id: str, chunk: int) -> None:
    """Count the chunk as ended; the chunk that ends the batch queues the batch's own job."""
    with redis.pipeline() as pipe:
        pipe.sadd(_key(batch_id, "chunks"), chunk)
        pipe.expire(_key(batch_id, "chunks"), BATCH_KEY_TTL)
        pipe.scard(_key(batch_id, "chunks"))
        pipe.hget(_key(batch_id), "chunks")
        _, _, ended, chunks = pipe.execute()
    if chunks is None or ended < int(chunks):
        return
    batch_job = Job.fetch(batch_id, connection=redis, serializer=SERIALIZER)
    if batch_job.get_status() == JobStatus.CREATED:
        queue(batch_job.origin, redis).enqueue_job(batch_job)


def on_chunk_failure(job: Job, redis: Redis, exc_type, exc_value, traceback) -> None:
    """A chunk that fails for good still counts as ended, so its batch finishes, with an error entry
    for each image it held."""
    if tasks.on_failure(job, redis, exc_type, exc_value, traceback):
        end_chunk(redis, job.meta["batch"], job.meta["chunk"])


def finish(batch_id: str, images: list[str]) -> dict:
    """The batch job's result: one entry per image, in the order they were listed. Idempotent."""
    redis = get_current_job().connection
    entries = collect(redis, batch_id, images)
    failed = sum("error" in entry for entry in entries)
    with redis.pipeline() as pipe:  # the record goes with the result; kept till then so this job stays idempotent
        for part in PARTS:
            pipe.expire(_key(batch_id, part), worker_settings.result_ttl)
        pipe.execute()
    log.info("batch %s finished: %d images, %d failed", batch_id, len(entries), failed)
    return {"total": len(entries), "done": len(entries) - failed, "failed": failed, "images": entries}


def collect(redis: Redis, batch_id: str, images: list[str]) -> list[dict]:
    """Every image's entry in order; an image no chunk recorded (its job failed for good) gets an error."""
    stored = redis.hgetall(_key(batch_id, "entries"))
    lost = "It was not processed: the job holding it failed (see the worker log); submit it again."
    return [
        json.loads(stored[str(index).encode()]) if str(index).encode() in stored else {"image": image, "error": lost}
        for index, image in enumerate(images)
    ]


# --- watching it (the API) ---------------------------------------------------------------------------


def progress(redis: Redis, batch_id: str) -> dict | None:
    """{"done", "failed", "total"}: done counts images that succeeded. None if the batch is unknown."""
    with redis.pipeline() as pipe:
        pipe.hget(_key(batch_id), "total")
        pipe.hlen(_key(batch_id, "entries"))
        pipe.scard(_key(batch_id, "failed"))
        total, entries, failed = pipe.execute()
    if total is None:
        return None
    return {"done": entries - failed, "failed": failed, "total": int(total)}


def started_at(redis: Redis, batch_id: str) -> str | None:
    value = redis.hget(_key(batch_id), "startedAt")
    return value.decode() if value else None


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")

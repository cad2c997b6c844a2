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

import contextlib
import json
import logging
import math
import time
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Worker, get_current_job
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from imagejobs import jobs, metrics, reuse, tasks
from imagejobs.actions import ACTIONS, Action
from imagejobs.config import settings as worker_settings
from RedisConfig import SERIALIZER, queue

log = logging.getLogger(__name__)

# Long enough for a batch of thousands of images to run; the finished result then lives RESULT_TTL.
BATCH_KEY_TTL = 7 * 24 * 3600
# A chunk writes its entries this often and when it ends: a waiting page sees progress within
# FLUSH_EVERY, and a cancel stops new images within about FLUSH_EVERY plus one image. (No count limit:
# a chunk holds at most CHUNK_SIZE entries, and each extra write cost a reused image's chunk a round trip.)
FLUSH_EVERY = 0.25
# Fewer images than this per chunk and RQ's per-job cost (~10 ms) starts to weigh against ~10 ms per thumbnail.
MIN_CHUNK = 4
PARTS = ("", "entries", "failed", "chunks")
EXPIRED, CANCELED = "has expired", "was canceled"  # why a chunk does not run (begin_chunk)


def _key(batch_id: str, part: str = "") -> str:
    return f"imagejob:batch:{batch_id}" + (f":{part}" if part else "")


# --- creating it (the API) ----------------------------------------------------------------------------


def chunk_starts(total: int, workers: int, most: int) -> list[tuple[int, int]]:
    """(start, size) of each chunk, guided: each takes a share of what is left (1 / (2 x workers)), at most
    `most` (CHUNK_SIZE) and at least MIN_CHUNK. Big chunks while there is plenty keep RQ's cost per job
    small; ever smaller ones at the end keep every worker busy to the last image (equal chunks of a
    quarter of each worker's share left one worker alone with up to a chunk while the others idled)."""
    chunks, start = [], 0
    while start < total:
        share = math.ceil((total - start) / (2 * max(workers, 1)))
        size = min(total - start, max(1, min(most, max(MIN_CHUNK, share))))
        chunks.append((start, size))
        start += size
    return chunks


def enqueue(submission: jobs.Submission, action: Action, images: list[str], params: dict, job_id: str) -> Job:
    """The batch job (created, not yet queued), its record and its chunks (queued), written in one transaction."""
    redis, settings = submission.redis, submission.settings
    q = queue(action.queue, redis)
    starts = chunk_starts(len(images), Worker.count(connection=redis, queue=q), settings.chunk_size)
    batch_job = q.create_job(
        finish,
        args=(job_id, images, params),
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
        for number, (start, size) in enumerate(starts)
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
    """Part of a batch: each image's entry goes to the batch record as it is made (a few at a time), and
    the chunk starts no new image once the batch is canceled."""
    work = tasks.current_work(images, params, batch_id)
    recorder = Recorder(work.redis, batch_id, action)
    if (why_not := begin_chunk(work.redis, batch_id)) is not None:
        log.info("%s chunk %d of batch %s: not run, the batch %s", action, chunk, batch_id, why_not)
        if why_not == CANCELED:
            end_chunk(work.redis, batch_id, chunk)
        return {"images": 0, "failed": 0}
    started = time.perf_counter()
    for index, entry in enumerate(reuse.entries(ACTIONS[action], work), start=offset):
        if recorder.add(index, entry):
            break  # canceled: what is done is kept, nothing new starts
    recorder.flush()
    metrics.WORK.job(action, time.perf_counter() - started)
    log.info(
        "%s chunk %d of batch %s: %d images, %d failed, in %.1f ms%s",
        action,
        chunk,
        batch_id,
        recorder.recorded,
        recorder.failed,
        1000 * (time.perf_counter() - started),
        " (the batch was canceled)" if recorder.canceled else "",
    )
    end_chunk(work.redis, batch_id, chunk)
    return {"images": recorder.recorded, "failed": recorder.failed}


def begin_chunk(redis: Redis, batch_id: str) -> str | None:
    """Why a chunk should not run (EXPIRED or CANCELED), or None: it should, and the batch's start is noted
    (once). A chunk retried after its batch's answer expired would work for nobody and recreate its record
    without an expiry; a canceled batch's queued chunks are taken off their queue, but not one that was
    running and is retried."""
    with redis.pipeline() as pipe:
        pipe.exists(_key(batch_id))
        pipe.hexists(Job.key_for(batch_id), jobs.CANCELED_AT)
        recorded, canceled = pipe.execute()
    if not recorded:
        return EXPIRED
    if canceled:
        return CANCELED
    redis.hsetnx(_key(batch_id), "startedAt", _now())
    return None


class Recorder:
    """One chunk's entries, on their way to the batch record: kept back FLUSH_EVERY seconds, then written
    in one round trip, with an event that wakes the batch's waiting requests and a look at whether the
    batch was canceled. (One round trip an image cost more than the
    image itself for small work.) Entries are stored by image index, so a re-run chunk rewrites rather
    than adds."""

    def __init__(self, redis: Redis, batch_id: str, action: str):
        self.redis, self.batch_id, self.action = redis, batch_id, action
        self.pending: dict[int, dict] = {}
        self.recorded = self.failed = 0
        self.canceled = False
        self.flushed_at = self.last_entry_at = time.monotonic()

    def add(self, index: int, entry: dict) -> bool:
        """Keep an entry (and count how long its image took: since the one before); write what is kept
        when it is time. True once the batch is canceled."""
        now = time.monotonic()
        metrics.WORK.image(self.action, now - self.last_entry_at, failed="error" in entry)
        self.last_entry_at = now
        self.pending[index] = entry
        self.recorded += 1
        self.failed += "error" in entry
        if now - self.flushed_at >= FLUSH_EVERY:
            self.flush()
        return self.canceled

    def flush(self) -> None:
        if not self.pending:
            return
        entries, failed = _key(self.batch_id, "entries"), _key(self.batch_id, "failed")
        bad = [index for index, entry in self.pending.items() if "error" in entry]
        good = [index for index, entry in self.pending.items() if "error" not in entry]
        with self.redis.pipeline() as pipe:
            pipe.hset(entries, mapping={str(index): json.dumps(entry) for index, entry in self.pending.items()})
            if bad:
                pipe.sadd(failed, *bad)
            if good:
                pipe.srem(failed, *good)
            for key in (entries, failed, jobs.events_key(self.batch_id)):
                pipe.expire(key, BATCH_KEY_TTL)
            pipe.xadd(jobs.events_key(self.batch_id), {"recorded": len(self.pending)}, maxlen=jobs.EVENTS_MAXLEN)
            pipe.hexists(Job.key_for(self.batch_id), jobs.CANCELED_AT)
            *_, canceled = pipe.execute()
        self.pending.clear()
        self.flushed_at = time.monotonic()
        if canceled and not self.canceled:  # the record then goes with the canceled job's answer
            expire(self.redis, self.batch_id, worker_settings.result_ttl)
        self.canceled = bool(canceled)


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
    if not redis.hsetnx(_key(batch_id), "finishQueued", 1):  # another chunk's end (a re-run's) queued it
        return
    batch_job = Job.fetch(batch_id, connection=redis, serializer=SERIALIZER)
    if batch_job.get_status() == JobStatus.CREATED:
        queue(batch_job.origin, redis).enqueue_job(batch_job)


def on_chunk_failure(job: Job, redis: Redis, exc_type, exc_value, traceback) -> None:
    """A chunk that fails for good still counts as ended, so its batch finishes, with an error entry
    for each image it held."""
    if tasks.on_failure(job, redis, exc_type, exc_value, traceback):
        end_chunk(redis, job.meta["batch"], job.meta["chunk"])


def finish(batch_id: str, images: list[str], params: dict | None = None) -> dict:
    """The batch job's result: one entry per image, in the order they were listed, and what the action's
    summarize adds from them all. Idempotent. (params: None in a batch an earlier release queued.)"""
    job = get_current_job()
    entries = collect(job.connection, batch_id, images)
    failed = sum("error" in entry for entry in entries)
    expire(job.connection, batch_id, worker_settings.result_ttl)  # with the result; kept till then: idempotent
    log.info("batch %s finished: %d images, %d failed", batch_id, len(entries), failed)
    result = {"total": len(entries), "done": len(entries) - failed, "failed": failed, "images": entries}
    action = ACTIONS.get(job.meta.get("action"))
    if action is not None and action.summarize is not None:
        result |= action.summarize(entries, params or {})
    return result


def cancel(redis: Redis, batch_id: str, result_ttl: int) -> None:
    """Take the batch's chunks that still wait off their queue (the running ones stop themselves at their
    next write: Recorder.flush), so it starts no new image; its record goes with its answer."""
    expire(redis, batch_id, result_ttl)
    chunks = int(redis.hget(_key(batch_id), "chunks") or 0)
    for chunk in Job.fetch_many([f"{batch_id}-{number}" for number in range(chunks)], redis, SERIALIZER):
        if chunk is not None and chunk.get_status(refresh=False) == JobStatus.QUEUED:
            with contextlib.suppress(InvalidJobOperation):  # a worker took it meanwhile: it stops at its write
                chunk.cancel()


def made(redis: Redis, batch_id: str) -> list[dict]:
    """The entries recorded so far, in the order of their images (for a canceled batch)."""
    stored = redis.hgetall(_key(batch_id, "entries"))
    return [json.loads(stored[index]) for index in sorted(stored, key=int)]


def expire(redis: Redis, batch_id: str, seconds: int) -> None:
    with redis.pipeline() as pipe:
        for key in (*(_key(batch_id, part) for part in PARTS), jobs.events_key(batch_id)):
            pipe.expire(key, seconds)
        pipe.execute()


def collect(redis: Redis, batch_id: str, images: list[str]) -> list[dict]:
    """Every image's entry in order; an image no chunk recorded (its job failed for good) gets an error."""
    stored = redis.hgetall(_key(batch_id, "entries"))
    lost = "It was not processed: the job holding it failed (see the worker log); submit it again."
    return [
        json.loads(stored[str(index).encode()]) if str(index).encode() in stored else {"image": image, "error": lost}
        for index, image in enumerate(images)
    ]


# --- watching it (the API) ---------------------------------------------------------------------------


def entries_key(batch_id: str) -> str:
    """The hash of the batch's entries by image index: its length is progress.done + progress.failed."""
    return _key(batch_id, "entries")


def handled(redis: Redis, batch_id: str) -> int:
    """progress.done + progress.failed: the images that have an entry."""
    return redis.hlen(entries_key(batch_id))


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

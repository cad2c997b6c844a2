"""The API's side of jobs: enqueueing one image or a batch, and answering for a job by its id.

A batch (a folder, several uploads) is one job the user sees, the *batch job*, plus chunk jobs that
do the work. The chunks fan out across every worker; the batch job is created without being
enqueued, and the chunk that ends last enqueues it, so it runs once every image has an entry.
"""
import math
import time
import uuid
from datetime import datetime

from redis import Redis
from rq import Callback, Queue, Retry, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

import batches
from RedisConfig import SERIALIZER, queue
from config import settings

# Fewer images than this per chunk and RQ's per-job cost (~10 ms) starts to weigh against ~10 ms per thumbnail.
MIN_CHUNK = 4
# A blocking read is cut into slices this long; between slices the job's status is read afresh (see wait).
WAIT_SLICE = 5.0
TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def new_job_id() -> str:
    return uuid.uuid4().hex


def _options(job_id: str, action: str, kind: str, **meta) -> dict:
    """Every job of ours is kept RESULT_TTL, retried when its worker dies and explained when it fails."""
    return {
        "job_id": job_id, "result_ttl": settings.result_ttl, "failure_ttl": settings.result_ttl,
        "timeout": settings.job_timeout, "retry": Retry(max=settings.job_retries) if settings.job_retries else None,
        "on_failure": Callback("tasks.on_failure"), "meta": {"action": action, "kind": kind, **meta},
    }


class QueueFull(Exception):
    """More jobs wait than MAX_QUEUE_DEPTH: new work is refused (429) rather than queued without bound."""


def enqueue_single(redis: Redis, queue_name: str, action: str, image: str, params: dict, job_id: str) -> Job:
    return _enqueue_one(redis, queue_name, "tasks.run_single", (action, image, params), _options(job_id, action, "single"))


def enqueue_whole(redis: Redis, queue_name: str, action: str, images: list[str], params: dict, job_id: str, named: str) -> Job:
    """One job over all the images at once (a plot of a folder): its result is about them together."""
    return _enqueue_one(redis, queue_name, "tasks.run_whole", (action, images, params, named),
                        _options(job_id, action, "single", total=len(images)))


def _enqueue_one(redis: Redis, queue_name: str, func: str, args: tuple, options: dict) -> Job:
    q = queue(queue_name, redis)
    job = q.create_job(func, args=args, **options)
    with redis.pipeline() as pipe:
        q.enqueue_job(job, pipeline=pipe)
        _commit_unless_full(pipe, q, [job])
    return job


def _commit_unless_full(pipe, q: Queue, queued: list[Job], batch_job: Job | None = None) -> None:
    """Run the enqueue transaction with the queue's length read inside it. If the queue already held
    MAX_QUEUE_DEPTH jobs before the `queued` ones, take them (and the batch's job and record) back out
    and raise QueueFull.

    Reading the length in the same transaction as the push makes the limit exact under concurrent
    submits (a read before the push let a burst overshoot it), and costs no extra round trip.
    """
    pipe.llen(q.key)
    depth = pipe.execute()[-1] - len(queued)
    if depth < settings.max_queue_depth:
        return
    with q.connection.pipeline() as undo:
        for job in queued:
            job.delete(pipeline=undo)
        if batch_job is not None:
            batch_job.delete(pipeline=undo)
            batches.discard(batch_job.id, pipeline=undo)
        undo.execute()
    raise QueueFull(f"The {q.name} queue holds {depth} jobs, its limit (MAX_QUEUE_DEPTH); try again shortly.")


def chunk_size(total: int, workers: int) -> int:
    """Images per chunk: about four chunks per worker, so every worker gets work and a slow
    chunk does not hold up the end, but never so small that per-job overhead dominates."""
    per_chunk = math.ceil(total / (4 * max(workers, 1)))
    return max(1, min(settings.chunk_size, max(MIN_CHUNK, per_chunk)))


def enqueue_batch(redis: Redis, queue_name: str, action: str, images: list[str], params: dict, job_id: str) -> Job:
    """The batch job (created, not yet queued) and its chunks (queued), written in one transaction."""
    q = queue(queue_name, redis)
    size = chunk_size(len(images), Worker.count(connection=redis, queue=q))
    batch_job = q.create_job("tasks.finish_batch", args=(job_id, images), status=JobStatus.CREATED,
                             **_options(job_id, action, "batch", total=len(images)))
    batch_job.origin = q.name
    chunks = [
        Queue.prepare_data("tasks.run_chunk", (job_id, action, number, start, images[start:start + size], params),
                           **_options(f"{job_id}-{number}", action, "chunk", batch=job_id, chunk=number))
        for number, start in enumerate(range(0, len(images), size))
    ]
    with redis.pipeline() as pipe:
        batches.create(redis, job_id, total=len(images), chunks=len(chunks), pipeline=pipe)
        batch_job.save(pipeline=pipe)
        chunk_jobs = q.enqueue_many(chunks, pipeline=pipe)
        _commit_unless_full(pipe, q, chunk_jobs, batch_job)
    return batch_job


class JobNotFound(LookupError):
    pass


def fetch(redis: Redis, job_id: str) -> Job:
    """The user's job (a single or batch job; chunks are internal), or JobNotFound once it expired."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except (NoSuchJobError, ValueError):  # ValueError: not even a well-formed job id
        raise _gone(job_id) from None
    if job.meta.get("kind") not in ("single", "batch"):
        raise JobNotFound(f"No job {job_id!r}.")
    return job


def _gone(job_id: str) -> JobNotFound:
    return JobNotFound(f"No job {job_id!r}: it never existed or its result expired (results are kept {settings.result_ttl} s).")


def wait(redis: Redis, job: Job, seconds: float) -> Result | None:
    """Hold until the job ends or `seconds` pass, woken by Redis itself, not by polling.

    A job's end appends an entry to its result stream rq:results:<id> (RQ writes it in the same
    transaction as the status); XREAD BLOCK sleeps in Redis until that entry exists. Reading from
    the stream's start means an entry written before we began waiting is seen at once: it cannot be
    missed the way a pub/sub message sent while nobody listened can. The fallback, for an ending that
    writes no entry (a job cancelled or deleted by hand): the block is cut into slices of WAIT_SLICE
    seconds and the job is read again between slices, so such an end is noticed within one slice.

    `job` must be fresh (just fetched or enqueued): its status is not read again before the first block,
    and the job is re-read once after each block (its status and the meta an error sentence went to).
    Returns the last result entry read, if any, for `describe`, which then need not read it again.
    """
    deadline = time.monotonic() + seconds
    stream, seen, result = f"rq:results:{job.id}", "0-0", None
    while job.get_status(refresh=False) not in TERMINAL:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        read = redis.xread({stream: seen}, count=1, block=max(1, int(1000 * min(left, WAIT_SLICE))))
        if read:  # an ending, or a failed attempt that RQ retries (then the next read waits for a newer entry)
            seen, payload = read[0][1][-1]
            result = Result.restore(job.id, seen.decode(), payload, connection=redis, serializer=SERIALIZER)
        try:
            job.refresh()
        except NoSuchJobError:  # deleted while we waited
            raise _gone(job.id) from None
    return result


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def describe(redis: Redis, job: Job, read: Result | None = None) -> tuple[int, dict]:
    """The HTTP status and body that answer for a job: 200 once it ended, 202 while it runs.
    `read`: the job's result entry that `wait` read, if any (an ending's saves reading it again)."""
    status = job.get_status(refresh=False)
    ended = None
    if status in TERMINAL:
        ended = read if read is not None and read.type != Result.Type.RETRIED else job.latest_result()
    is_batch = job.meta.get("kind") == "batch"
    batch_started = batches.started_at(redis, job.id) if is_batch else None
    body = {"jobId": job.id, "action": job.meta.get("action"), "status": _public_status(is_batch, batch_started, status),
            "enqueuedAt": _iso(job.created_at), "startedAt": _iso(job.started_at), "endedAt": None}
    if ended is not None:
        body["startedAt"] = _iso(ended.execution_started_at)
        body["endedAt"] = _iso(ended.execution_ended_at or ended.created_at)
    if batch_started:
        body["startedAt"] = batch_started
    if status == JobStatus.FINISHED and ended is not None:
        body["result"] = ended.return_value
        return 200, body
    if status in TERMINAL:
        body["status"] = "failed"
        body["error"] = job.meta.get("error") or _unexplained_end(status)
        return 200, body
    if is_batch:
        body["progress"] = batches.progress(redis, job.id)
    return 202, body


def _public_status(is_batch: bool, batch_started: str | None, status: JobStatus) -> str:
    """RQ's statuses as the user sees them: queued, started, finished or failed."""
    if status in (JobStatus.FINISHED, JobStatus.FAILED):
        return status.value
    if status == JobStatus.STARTED:
        return "started"
    if is_batch and (status == JobStatus.QUEUED or batch_started):
        return "started"  # a batch is under way once its first chunk has started
    return "queued"


def _unexplained_end(status: JobStatus) -> str:
    return f"The job was {status.value} before it finished; submit it again."

"""What GET /result answers for a job (its status, result or error, a batch's progress), and waiting
for a job to end without polling."""

import time
from datetime import datetime

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from imagejobs import batch, callbacks, jobs
from RedisConfig import SERIALIZER

# A blocking read is cut into slices this long; between slices the job's status is read afresh (see wait).
WAIT_SLICE = 5.0


def wait(redis: Redis, job: Job, seconds: float, result_ttl: int, seen: int | None = None) -> Result | None:
    """Hold until the job ends or `seconds` pass; for a batch given `seen`, also until progress.done +
    progress.failed differs from it. Woken by Redis itself, not by polling.

    A job's end appends an entry to its result stream (RQ writes it in the same transaction as the
    status); a batch's progress and a cancel append to its events stream (jobs.events_key). XREAD BLOCK
    on both sleeps in Redis until one of them has an entry newer than the last one seen. Reading the
    result stream from its start means an end that came before the wait began is seen at once (a
    pub/sub message sent while nobody listened would be missed); the events stream is read from the
    entry that was last when progress was first counted, so a change in between is not missed either.
    The fallback, for an ending that writes no entry (a job deleted by hand): the block is cut into
    slices of WAIT_SLICE seconds and the job is read again between slices.

    `job` must be fresh (just fetched or enqueued). Returns the last result entry read, if any, for
    `describe`, which then need not read it again.
    """
    deadline = time.monotonic() + seconds
    results, events = Result.get_key(job.id), jobs.events_key(job.id)
    positions, result = {results: "0-0", events: "0-0"}, None
    watch_progress = seen is not None and job.meta.get("kind") == jobs.BATCH
    if watch_progress:
        with redis.pipeline() as pipe:
            pipe.hlen(batch.entries_key(job.id))
            pipe.xrevrange(events, count=1)
            handled, last = pipe.execute()
        if handled != seen:
            return None
        positions[events] = last[0][0] if last else "0-0"
    while not jobs.ended(job):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        with redis.pipeline(transaction=False) as pipe:  # the job is read as soon as the block ends: one round trip
            pipe.xread(positions, count=1, block=max(1, int(1000 * min(left, WAIT_SLICE))))
            pipe.hgetall(job.key)
            read, data = pipe.execute()
        for stream, entries in read or ():
            positions[stream.decode()], payload = entries[-1]
            if stream.decode() == results:  # an end, or a failed attempt that RQ retries (then wait on)
                result = Result.restore(
                    job.id, positions[results].decode(), payload, connection=redis, serializer=SERIALIZER
                )
        try:
            jobs.restore(job, data)
        except NoSuchJobError:  # deleted while we waited
            raise jobs.gone(job.id, result_ttl) from None
        if watch_progress and read and batch.handled(redis, job.id) != seen:
            break
    return result


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def describe(redis: Redis, job: Job, read: Result | None = None) -> tuple[int, dict]:
    """The HTTP status and body that answer for a job: 200 once it ended (finished, failed or canceled),
    202 while it runs. `read`: the job's result entry that `wait` read, if any (an ending's saves reading
    it again)."""
    status = job.get_status(refresh=False)
    ended = None
    canceled = jobs.canceled_at(job)
    if status in jobs.TERMINAL and canceled is None:
        ended = read if read is not None and read.type != Result.Type.RETRIED else job.latest_result()
    is_batch = job.meta.get("kind") == jobs.BATCH
    batch_started = batch.started_at(redis, job.id) if is_batch else None
    body = {
        "jobId": job.id,
        "action": job.meta.get("action"),
        "status": _public_status(is_batch, batch_started, status),
        "enqueuedAt": _iso(job.created_at),
        "startedAt": _iso(job.started_at),
        "endedAt": None,
    }
    if ended is not None:
        body["startedAt"] = _iso(ended.execution_started_at)
        body["endedAt"] = _iso(ended.execution_ended_at or ended.created_at)
    if batch_started:
        body["startedAt"] = batch_started
    if (callback := callbacks.outcome(redis, job)) is not None:
        body["callback"] = callback
    if canceled is not None:
        body.update(status="canceled", endedAt=canceled)
        if is_batch:
            progress = batch.progress(redis, job.id)
            made = batch.made(redis, job.id)
            # In result.images, where a finished batch has its entries. "entries" (the same list) is kept for
            # clients written before; it goes in a later release.
            body.update(progress=progress, result={**progress, "images": made}, entries=made)
        return 200, body
    if status == JobStatus.FINISHED and ended is not None:
        body["result"] = ended.return_value
        if job.meta.get("reused"):
            body["reused"] = True  # a single image's remembered result (a batch says so in each entry)
        return 200, body
    if status in jobs.TERMINAL:
        body["status"] = "failed"
        body["error"] = job.meta.get("error") or _unexplained_end(status)
        return 200, body
    if is_batch:
        body["progress"] = batch.progress(redis, job.id)
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

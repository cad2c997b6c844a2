"""What GET /result answers for a job (its status, result or error, a batch's progress), and waiting
for a job to end without polling."""

import time
from datetime import datetime

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from imagejobs import batch, jobs
from RedisConfig import SERIALIZER

# A blocking read is cut into slices this long; between slices the job's status is read afresh (see wait).
WAIT_SLICE = 5.0


def wait(redis: Redis, job: Job, seconds: float, result_ttl: int) -> Result | None:
    """Hold until the job ends or `seconds` pass, woken by Redis itself, not by polling.

    A job's end appends an entry to its result stream (RQ writes it in the same transaction as the
    status); XREAD BLOCK sleeps in Redis until that entry exists. Reading from the stream's start
    means an entry written before we began waiting is seen at once: it cannot be missed the way a
    pub/sub message sent while nobody listened can. The fallback, for an ending that writes no entry
    (a job cancelled or deleted by hand): the block is cut into slices of WAIT_SLICE seconds and the
    job is read again between slices, so such an end is noticed within one slice.

    `job` must be fresh (just fetched or enqueued): its status is not read again before the first block,
    and the job is re-read once after each block (its status and the meta an error sentence went to).
    Returns the last result entry read, if any, for `describe`, which then need not read it again.
    """
    deadline = time.monotonic() + seconds
    stream, seen, result = Result.get_key(job.id), "0-0", None
    while job.get_status(refresh=False) not in jobs.TERMINAL:
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
            raise jobs.gone(job.id, result_ttl) from None
    return result


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def describe(redis: Redis, job: Job, read: Result | None = None) -> tuple[int, dict]:
    """The HTTP status and body that answer for a job: 200 once it ended, 202 while it runs.
    `read`: the job's result entry that `wait` read, if any (an ending's saves reading it again)."""
    status = job.get_status(refresh=False)
    ended = None
    if status in jobs.TERMINAL:
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
    if status == JobStatus.FINISHED and ended is not None:
        body["result"] = ended.return_value
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

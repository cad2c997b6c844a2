"""What every job of this service shares: its kind, its RQ options, the enqueue transaction with the
queue's limit, and finding a user's job by its id.

The job a user sees is a *single* job (one image, or a plot over several: tasks.py) or a *batch* job
(a folder, several uploads or URLs: batch.py, with its *chunk* jobs, which the user never sees).
"""

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis
from redis.exceptions import WatchError
from rq import Callback, Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from imagejobs.config import Settings
from RedisConfig import SERIALIZER

SINGLE, BATCH, CHUNK = "single", "batch", "chunk"  # job.meta["kind"]
TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
# When the user canceled the job: a field of the job's own hash (rq:job:<id>), which RQ reads past and
# never rewrites, so it comes with every read of the job, in the same round trip.
CANCELED_AT = "imagejobCanceledAt"
EVENTS_MAXLEN = 1  # a job's events stream says only "something changed since": its last entry is enough


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Submission:
    """What every enqueue needs besides the job itself: where to, under which settings, and for whom."""

    redis: Redis
    settings: Settings
    client: str  # the name of the client the job belongs to (clients.py)
    callback_url: str | None = None  # where to POST the job's answer when it ends (callbacks.py)


def options(submission: Submission, job_id: str, action: str, kind: str, on_failure: Callable, **meta) -> dict:
    """Every job of ours is kept RESULT_TTL, retried when its worker dies, explained when it fails, and
    belongs to the client that submitted it."""
    settings = submission.settings
    return {
        "job_id": job_id,
        "result_ttl": settings.result_ttl,
        "failure_ttl": settings.result_ttl,
        "timeout": settings.job_timeout,
        "retry": Retry(max=settings.job_retries) if settings.job_retries else None,
        "on_failure": Callback(on_failure),
        "meta": {"action": action, "kind": kind, "client": submission.client, **meta}
        | ({"callbackUrl": submission.callback_url} if submission.callback_url and kind != CHUNK else {}),
    }


class QueueFull(Exception):
    """More jobs wait than MAX_QUEUE_DEPTH: new work is refused (429) rather than queued without bound."""


def commit_unless_full(
    pipe, q: Queue, queued: list[Job], limit: int, created: tuple[Job, ...] = (), keys: tuple[str, ...] = ()
) -> None:
    """Run the enqueue transaction with the queue's length read inside it. If the queue already held
    `limit` jobs before the `queued` ones, take them back out (with the jobs `created` beside them and
    the `keys` written for them) and raise QueueFull.

    Reading the length in the same transaction as the push makes the limit exact under concurrent
    submits (a read before the push let a burst overshoot it), and costs no extra round trip.
    """
    pipe.llen(q.key)
    depth = pipe.execute()[-1] - len(queued)
    if depth < limit:
        return
    with q.connection.pipeline() as undo:
        for job in (*queued, *created):
            job.delete(pipeline=undo)
        if keys:
            undo.delete(*keys)
        undo.execute()
    raise QueueFull(f"The {q.name} queue holds {depth} jobs, its limit (MAX_QUEUE_DEPTH); try again shortly.")


class JobNotFound(LookupError):
    pass


class JobEnded(Exception):
    """The job ended before it could be canceled (409)."""


def events_key(job_id: str) -> str:
    """A stream a waiting request blocks on beside the job's result stream: a batch's chunks add to it as
    entries are recorded, a cancel adds to it; so a wait wakes on progress and on a cancel at once."""
    return f"imagejob:events:{job_id}"


def fetch(redis: Redis, job_id: str, result_ttl: int, owned: Callable[[Job], bool] = lambda job: True) -> Job:
    """The user's job (a single or batch job; chunks are internal) if `owned` says it is theirs; else, as
    once it expired, JobNotFound, with the same sentence whether the job is someone else's or none at all.
    job.canceled_at is when the user canceled it (None if they did not)."""
    try:
        job = refresh(Job(job_id, connection=redis, serializer=SERIALIZER))
    except (NoSuchJobError, ValueError):  # ValueError: not even a well-formed job id
        raise gone(job_id, result_ttl) from None
    if job.meta.get("kind") not in (SINGLE, BATCH) or not owned(job):
        raise gone(job_id, result_ttl)
    return job


def refresh(job: Job) -> Job:
    """The job read afresh from Redis, with when it was canceled, in one round trip (NoSuchJobError if gone)."""
    return restore(job, job.connection.hgetall(job.key))


def restore(job: Job, data: dict) -> Job:
    """The job from its hash as HGETALL read it (NoSuchJobError if there was none)."""
    if not data:
        raise NoSuchJobError(job.id)
    job.restore(data)
    canceled = data.get(CANCELED_AT.encode())
    job.canceled_at = canceled.decode() if canceled else None
    return job


def canceled_at(job: Job) -> str | None:
    """When the user canceled the job, as of its last read (None: not canceled, or a job just enqueued)."""
    return getattr(job, "canceled_at", None)


def ended(job: Job) -> bool:
    return canceled_at(job) is not None or job.get_status(refresh=False) in TERMINAL


def cancel(redis: Redis, job: Job, result_ttl: int) -> None:
    """Cancel a job that has not ended: mark it (the mark wakes its waiters), take it off its queue if it
    waits there, and let it expire RESULT_TTL from now unless its end sets that. A batch's chunks are
    batch.py's to stop. JobEnded if it had ended already.

    The check and the mark are one transaction WATCHing the job's hash, so a job that ends meanwhile is
    not shown canceled, and of two cancels at once the second is told the job has ended."""
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(job.key)
                status, canceled = pipe.hmget(job.key, "status", CANCELED_AT)
                if status is None:
                    raise gone(job.id, result_ttl)
                status = JobStatus(status.decode())
                if canceled is not None or status in TERMINAL:
                    shown = "canceled" if canceled is not None else status.value
                    raise JobEnded(f"Job {job.id} has already ended ({shown}); there is nothing to cancel.")
                canceled_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                pipe.multi()
                pipe.hset(job.key, CANCELED_AT, canceled_at)
                pipe.xadd(events_key(job.id), {"canceled": canceled_at}, maxlen=EVENTS_MAXLEN)
                pipe.expire(events_key(job.id), result_ttl)
                if status != JobStatus.STARTED:  # a running job's end sets its own expiry
                    pipe.expire(job.key, result_ttl)
                pipe.execute()
                break
            except WatchError:  # the job changed (a beat, its end, another cancel): read it again
                continue
    job.canceled_at = canceled_at
    if status == JobStatus.QUEUED:
        with contextlib.suppress(InvalidJobOperation):  # already off its queue: its answer says canceled
            job.cancel()  # RQ takes it off its queue: it never runs


def gone(job_id: str, result_ttl: int) -> JobNotFound:
    return JobNotFound(f"No job {job_id!r}: it never existed or its result expired (results are kept {result_ttl} s).")

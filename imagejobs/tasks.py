"""A single job: enqueueing it (the API) and running it (a worker), and what any failed job says.

  run_single(action, image, params)          one image; its entry's result is the job's result
  run_whole(action, images, params, named)   an action over all the images at once (a plot)

A batch's jobs are in batch.py. A single job with a bad image fails with that image's sentence and is
not retried (a bad image stays bad); anything else is retried while JOB_RETRIES last.
"""

import logging
import time

from redis import Redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from imagejobs import callbacks, config, jobs, metrics, reuse
from imagejobs.actions import ACTIONS, Action
from imagejobs.clients import ANONYMOUS
from imagejobs.processors import ImageJobError, Work
from RedisConfig import queue

log = logging.getLogger(__name__)


# --- the API's side ---------------------------------------------------------------------------------


def enqueue_single(submission: jobs.Submission, action: Action, image: str, params: dict, job_id: str) -> Job:
    options = jobs.options(submission, job_id, action.name, jobs.SINGLE, on_failure)
    return _enqueue(submission, action, run_single, (action.name, image, params), options)


def enqueue_whole(
    submission: jobs.Submission, action: Action, images: list[str], params: dict, job_id: str, named: str
) -> Job:
    """One job over all the images at once (a plot of a folder): its result is about them together."""
    options = jobs.options(submission, job_id, action.name, jobs.SINGLE, on_failure, total=len(images))
    return _enqueue(submission, action, run_whole, (action.name, images, params, named), options)


def _enqueue(submission: jobs.Submission, action: Action, func, args: tuple, options: dict) -> Job:
    q = queue(action.queue, submission.redis)
    job = q.create_job(func, args=args, **options)
    with submission.redis.pipeline() as pipe:
        q.enqueue_job(job, pipeline=pipe)
        jobs.commit_unless_full(pipe, q, [job], submission.settings.max_queue_depth)
    return job


# --- the worker's side ------------------------------------------------------------------------------


def current_work(images: list[str], params: dict, named: str) -> Work:
    """The Work of the job this worker runs now (a chunk's downloads go under its batch's id)."""
    job = get_current_job()
    batch_id = job.meta.get("batch", job.id)
    return Work(images, params, named, batch_id, config.settings, job.connection, job.meta.get("client", ANONYMOUS))


def run_single(action: str, image: str, params: dict) -> dict:
    started = time.perf_counter()
    entry = only_entry(ACTIONS[action], current_work([image], params, image))
    if entry.get("reused"):  # the answer says so (GET /result: "reused": true)
        job = get_current_job()
        job.meta["reused"] = True
        job.save_meta()
    took = time.perf_counter() - started
    metrics.WORK.image(action, took, failed="error" in entry)
    metrics.WORK.job(action, took)
    log.info("%s %s in %.1f ms%s", action, image, 1000 * took, " (failed)" if "error" in entry else "")
    return result_of(entry)


def run_whole(action: str, images: list[str], params: dict, named: str) -> dict:
    """An action over all the images at once; a bad image here fails the job with its sentence."""
    started = time.perf_counter()
    entry = only_entry(ACTIONS[action], current_work(images, params, named))
    took = time.perf_counter() - started
    metrics.WORK.job(action, took)
    log.info("%s of %s (%d images) in %.1f ms", action, named, len(images), 1000 * took)
    return result_of(entry)


def only_entry(action: Action, work: Work) -> dict:
    return next(iter(reuse.entries(action, work)))


def result_of(entry: dict) -> dict:
    """The entry's result, or ImageJobError with its sentence, which names the image."""
    if "error" in entry:
        raise ImageJobError(f"{entry['image']}: {entry['error']}")
    return entry["result"]


def on_failure(job: Job, redis: Redis, exc_type, exc_value, traceback) -> None:
    """RQ calls this when a job raises, times out or is abandoned by a dead worker.

    It stores the user's sentence in job.meta["error"], once retries are over. A bad image is not
    retried; anything else is, while retries remain. Returns whether the job failed for good.
    """
    if exc_type is ImageJobError:
        job.retries_left = 0
    if job.should_retry:
        log.warning("job %s failed (%s); retrying, %d retries left", job.id, exc_type.__name__, job.retries_left)
        return False
    job.meta["error"] = failure_sentence(job, exc_type, exc_value)
    job.save_meta()
    with redis.pipeline() as pipe:  # a job that failed for good calls back
        callbacks.schedule(pipe, job, config.settings)
        pipe.execute()
    return True


def failure_sentence(job: Job, exc_type, exc_value) -> str:
    if exc_type is ImageJobError:
        return str(exc_value)
    if issubclass(exc_type, JobTimeoutException):
        return (
            f"The job ran longer than its limit of {job.timeout} seconds (JOB_TIMEOUT) and was stopped; "
            "raise the limit or send fewer or smaller images."
        )
    if issubclass(exc_type, AbandonedJobError):
        return "The worker running this job stopped before it finished, and retries ran out; submit it again."
    return f"The job failed unexpectedly ({exc_type.__name__}); the worker log has details under job {job.id}."

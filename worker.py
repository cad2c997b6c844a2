"""An RQ worker process: `python worker.py images` (size/resize/plot) or `python worker.py classify`.

The worker itself (ImageWorker, TrustedJob) is in imagejobs/worker.py; this is the command the
containers, run.py and the tests start.

`python worker.py --check` exits 0 when Redis answers and a worker of this host is registered (the
container healthcheck).
"""

import argparse
import logging
import socket
import sys
from functools import partial

from rq import Worker

from imagejobs import answers, callbacks, jobs, metrics
from imagejobs.config import settings
from imagejobs.processors import classify
from imagejobs.startup import CannotStart, check_writable
from imagejobs.worker import ImageWorker, TrustedJob
from log import setup_logging
from RedisConfig import (
    CLASSIFY_QUEUE,
    QUEUE_NAMES,
    SERIALIZER,
    RedisNotConfigured,
    RedisUnreachable,
    connection,
    queue,
    wait_for_redis,
)


def answer_of(redis, job_id: str) -> dict:
    """A job's answer as GET /result gives it (JobNotFound once it expired), for its callback."""
    _, body = answers.describe(redis, jobs.fetch(redis, job_id, settings.result_ttl))
    body.pop("callback", None)  # the delivery's own outcome is not news to the receiver
    return body


def healthy() -> bool:
    redis = connection()
    redis.ping()
    host = socket.gethostname()
    return any(worker.hostname == host for worker in Worker.all(connection=redis))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queues", nargs="*", help=f"queues to serve: {', '.join(QUEUE_NAMES)}")
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if Redis answers and a worker of this host is registered"
    )
    args = parser.parse_args(argv)
    if args.check:
        return 0 if healthy() else 1
    if not args.queues or not set(args.queues) <= set(QUEUE_NAMES):
        parser.error(f"name the queues to serve, among: {', '.join(QUEUE_NAMES)}")
    try:  # before anything writes there (the log file first): one clear line instead of a PermissionError later
        check_writable([settings.images_root, settings.logs_dir])
    except CannotStart as exc:
        sys.exit(f"worker: {exc}")
    service = "classifier" if args.queues == ["classify"] else "worker"
    log = setup_logging(service)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)  # RQ logs several lines per job; ours log one
    settings.check()
    wait_for_redis(settings)
    if CLASSIFY_QUEUE in args.queues:
        classify.warm_up(settings)  # the model loads here, and only in a classify worker
    redis = connection()
    worker = ImageWorker(
        [queue(name, redis) for name in args.queues],
        connection=redis,
        serializer=SERIALIZER,
        job_class=TrustedJob,
        worker_ttl=settings.worker_ttl,
        maintenance_interval=settings.maintenance_interval,
    )
    for _ in range(callbacks.COURIERS):  # deliver callbacks beside the jobs
        callbacks.Courier(redis, settings, partial(answer_of, redis)).start()
    log.info("worker %s serving %s", worker.name, ", ".join(args.queues))
    worker.work(logging_level="WARNING")
    metrics.WORK.flush(redis)  # what was counted since the last beat
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RedisNotConfigured, RedisUnreachable, ValueError) as exc:
        sys.exit(f"worker: {exc}")

"""An RQ worker process: `python worker.py images` (size/resize/plot) or `python worker.py classify`.

It is a SimpleWorker: it runs every job in the worker's own process instead of forking a child per job.
Forking costs ~20 ms per job against ~5.5 ms (a no-op job, rq 2.12, 2 cores: bench/job_overhead.py), and keeps nothing warm
between jobs; a SimpleWorker keeps imports (and, for the classifier, the model) loaded. The price: a
job that crashes the interpreter takes the worker with it; RQ then sees the job abandoned and retries it.

While a job runs, a thread keeps the job's heartbeat (HEARTBEAT_TTL), and idle workers look for
abandoned jobs every MAINTENANCE_INTERVAL: a job whose worker was killed is found within about a
minute and retried (JOB_RETRIES), where a plain SimpleWorker would leave it "started" for
JOB_TIMEOUT + 60 s and look only every 10 minutes.

`python worker.py --check` exits 0 when Redis answers and a worker of this host is registered (the
container healthcheck).
"""
import argparse
import logging
import socket
import sys
import threading

from rq import SimpleWorker, Worker

from RedisConfig import CLASSIFY_QUEUE, QUEUE_NAMES, SERIALIZER, RedisNotConfigured, connection, queue
from config import settings
from log import setup_logging
from tasks import TrustedJob


HEARTBEAT_TTL = 30  # seconds a running job's heartbeat lasts; the beat is renewed every third of that
MAINTENANCE_INTERVAL = 15  # seconds between a worker's looks for abandoned jobs
WORKER_TTL = 45  # the worker's own key; an idle worker wakes every WORKER_TTL - 15 s to beat and look


class ImageWorker(SimpleWorker):
    """A SimpleWorker whose running jobs keep a short heartbeat, so a dead worker's job is noticed soon."""

    def get_heartbeat_ttl(self, job) -> int:
        return HEARTBEAT_TTL

    def execute_job(self, job, queue):
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, stop), name="heartbeat", daemon=True)
        beat.start()
        try:
            super().execute_job(job, queue)
        finally:
            stop.set()
            beat.join()

    def _beat(self, job, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_TTL / 3):
            try:
                self.maintain_heartbeats(job)
            except Exception as exc:  # the job may just have ended, or Redis blinked: the next beat tries again
                logging.getLogger(__name__).debug("heartbeat of job %s skipped: %s", job.id, exc)


def healthy() -> bool:
    redis = connection()
    redis.ping()
    host = socket.gethostname()
    return any(worker.hostname == host for worker in Worker.all(connection=redis))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queues", nargs="*", help=f"queues to serve: {', '.join(QUEUE_NAMES)}")
    parser.add_argument("--check", action="store_true", help="exit 0 if Redis answers and a worker of this host is registered")
    args = parser.parse_args(argv)
    if args.check:
        return 0 if healthy() else 1
    if not args.queues or not set(args.queues) <= set(QUEUE_NAMES):
        parser.error(f"name the queues to serve, among: {', '.join(QUEUE_NAMES)}")
    service = "classifier" if args.queues == ["classify"] else "worker"
    log = setup_logging(service)
    logging.getLogger("rq.worker").setLevel(logging.WARNING)  # RQ logs several lines per job; ours log one
    settings.url_networks  # refuse to start on a malformed ALLOWED_URL_NETWORKS
    if CLASSIFY_QUEUE in args.queues:
        import classify_tasks  # the model's libraries load here, and only in a classify worker

        classify_tasks.warm_up()
    redis = connection()
    worker = ImageWorker([queue(name, redis) for name in args.queues], connection=redis, serializer=SERIALIZER,
                         job_class=TrustedJob, worker_ttl=WORKER_TTL, maintenance_interval=MAINTENANCE_INTERVAL)
    log.info("worker %s serving %s", worker.name, ", ".join(args.queues))
    worker.work(logging_level="WARNING")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RedisNotConfigured, ValueError) as exc:
        sys.exit(f"worker: {exc}")

"""Run one RQ worker in burst mode over a queue and print what it took, as one JSON line.

    python bench/rq_burst.py REDIS_URL QUEUE simple|fork

Used by bench/job_overhead.py: `simple` is rq.SimpleWorker (jobs run in the worker's process, as
the service's worker.py does), `fork` is rq.Worker (a forked work horse per job). The job functions
must be importable: this script's folder (bench/) is on sys.path, so `noop.noop` is.
"""

import json
import sys
import time

from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry
from rq.serializers import JSONSerializer


def main(argv) -> int:
    url, queue_name, kind = argv
    redis = Redis.from_url(url)
    queue = Queue(queue_name, connection=redis, serializer=JSONSerializer)
    waiting = queue.count
    worker_class = {"simple": SimpleWorker, "fork": Worker}[kind]
    worker = worker_class([queue], connection=redis, serializer=JSONSerializer)
    started = time.perf_counter()
    worker.work(
        burst=True, logging_level="WARNING"
    )  # RQ logs several lines per job at INFO; the service sets WARNING too
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "kind": kind,
                "seconds": seconds,
                "waiting": waiting,
                "left": queue.count,
                "succeeded": FinishedJobRegistry(queue=queue).count,
                "failed": FailedJobRegistry(queue=queue).count,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

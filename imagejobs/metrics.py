"""Prometheus metrics: the API's requests, the work the workers do, and the queues as Redis has them.

- The API's counters live in its processes; under gunicorn with several processes PROMETHEUS_MULTIPROC_DIR
  makes them add up (gunicorn.conf.py sets it up).
- The work (images done and failed, how long each image and each job took, per action) is counted by each
  worker in memory and added to one Redis hash every FLUSH_EVERY seconds by its heartbeat thread (Work),
  so workers on any host are counted and no job pays a round trip for it; GET /metrics reads the hash.
- Queue depths, jobs by state and workers busy or idle are read from Redis at each scrape.
"""

import bisect
import os
import threading
from collections import Counter as Tally
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from redis import Redis
from rq import Worker
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from RedisConfig import QUEUE_NAMES, queue

REQUESTS = Counter("imageapi_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "imageapi_request_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENQUEUED = Counter("imageapi_jobs_enqueued_total", "Jobs enqueued", ["action", "kind"])
IMAGES = Counter("imageapi_images_submitted_total", "Images named by enqueued jobs", ["action"])

WORK_KEY = "imagejob:metrics"  # hash: "<metric>|<action>|<label>" -> count (or seconds, for a _sum)
FLUSH_EVERY = 5  # seconds between a worker's writes of what it counted
BUCKETS = {  # upper bounds, seconds
    "image": (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    "job": (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
}


class Work:
    """What one worker process did since its last flush: images by outcome, and durations by bucket."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tally = Tally()

    def image(self, action: str, seconds: float, failed: bool) -> None:
        self._add(action, "image", seconds, images="failed" if failed else "done")

    def job(self, action: str, seconds: float) -> None:
        self._add(action, "job", seconds)

    def _add(self, action: str, what: str, seconds: float, images: str | None = None) -> None:
        bucket = bisect.bisect_left(BUCKETS[what], seconds)  # len(BUCKETS) for +Inf
        with self.lock:
            self.tally[f"{what}_bucket|{action}|{bucket}"] += 1
            self.tally[f"{what}_sum|{action}|"] += seconds
            if images:
                self.tally[f"images|{action}|{images}"] += 1

    def flush(self, redis: Redis) -> None:
        """Add what was counted to the Redis hash, in one round trip (nothing is lost if it fails: it waits)."""
        with self.lock:
            taken, self.tally = self.tally, Tally()
        if not taken:
            return
        try:
            with redis.pipeline(transaction=False) as pipe:
                for field, value in taken.items():
                    pipe.hincrbyfloat(WORK_KEY, field, value)
                pipe.execute()
        except Exception:
            with self.lock:
                self.tally.update(taken)
            raise


WORK = Work()  # the process's tally; a worker's heartbeat thread flushes it


class WorkCollector(Collector):
    """The work the workers counted, from the Redis hash."""

    def __init__(self, redis: Redis):
        self.redis = redis

    def collect(self):
        stored = {field.decode(): float(value) for field, value in self.redis.hgetall(WORK_KEY).items()}
        images = CounterMetricFamily("imageapi_images", "Images the workers processed", labels=["action", "outcome"])
        for field, value in stored.items():
            kind, action, outcome = field.split("|")
            if kind == "images":
                images.add_metric([action, outcome], value)
        yield images
        for what, help_text in (("image", "Time to process one image"), ("job", "Time a worker spent on one job")):
            family = HistogramMetricFamily(f"imageapi_{what}_duration_seconds", help_text, labels=["action"])
            for action in sorted({f.split("|")[1] for f in stored if f.startswith(f"{what}_sum|")}):
                counts = [stored.get(f"{what}_bucket|{action}|{i}", 0) for i in range(len(BUCKETS[what]) + 1)]
                cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
                bounds = [*map(str, BUCKETS[what]), "+Inf"]
                family.add_metric([action], list(zip(bounds, cumulative)), stored[f"{what}_sum|{action}|"])
            yield family


class QueueCollector(Collector):
    """Queue depth, jobs by state and live workers, read from Redis when scraped."""

    def __init__(self, redis: Redis):
        self.redis = redis

    def collect(self):
        redis = self.redis
        depth = GaugeMetricFamily("imageapi_queue_depth", "Jobs waiting in a queue", labels=["queue"])
        states = GaugeMetricFamily("imageapi_queue_jobs", "Jobs in a queue's registries", labels=["queue", "state"])
        for name in QUEUE_NAMES:
            q = queue(name, redis)
            depth.add_metric([name], q.count)
            states.add_metric([name, "queued"], q.count)
            for state, registry in (
                ("started", StartedJobRegistry),
                ("finished", FinishedJobRegistry),
                ("failed", FailedJobRegistry),
                ("canceled", CanceledJobRegistry),
            ):
                states.add_metric([name, state], registry(queue=q).count)
        yield depth
        yield states
        workers = GaugeMetricFamily("imageapi_workers", "Workers registered in Redis, by state", labels=["state"])
        for state, count in sorted(Tally(worker.get_state() for worker in Worker.all(connection=redis)).items()):
            workers.add_metric([str(state)], count)
        yield workers


@cache
def _registry() -> CollectorRegistry:
    """The process's counters: merged across gunicorn processes when PROMETHEUS_MULTIPROC_DIR is set."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)
    return merged


def exposition(redis: Redis) -> bytes:
    """The /metrics body in Prometheus text format: the counters, then the queues as Redis has them now."""
    now = CollectorRegistry(auto_describe=False)
    now.register(WorkCollector(redis))
    now.register(QueueCollector(redis))
    return generate_latest(_registry()) + generate_latest(now)

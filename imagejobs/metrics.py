"""Prometheus metrics of the API, plus the queue's state read from Redis at each scrape.

Under gunicorn with several processes, PROMETHEUS_MULTIPROC_DIR makes the counters add up across them
(gunicorn.conf.py sets it up); the Redis-backed gauges are read fresh, so they are the same from any process.
"""

import os
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from redis import Redis
from rq import Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

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
            for state, registry in (
                ("started", StartedJobRegistry),
                ("finished", FinishedJobRegistry),
                ("failed", FailedJobRegistry),
            ):
                states.add_metric([name, state], registry(queue=q).count)
        yield depth
        yield states
        yield GaugeMetricFamily("imageapi_workers", "Workers registered in Redis", value=Worker.count(connection=redis))


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
    queues = CollectorRegistry(auto_describe=False)
    queues.register(QueueCollector(redis))
    return generate_latest(_registry()) + generate_latest(queues)

"""For operators: GET /health (Redis, workers, queue depths) and GET /metrics (Prometheus)."""

import logging

from flask import Blueprint, jsonify
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Worker

from imagejobs import metrics, params
from imagejobs.api.context import redis
from RedisConfig import QUEUE_NAMES, queue

blueprint = Blueprint("operators", __name__)
log = logging.getLogger("api")


@blueprint.get("/health")
@params.takes()
def health():
    try:
        redis().ping()
        body = {
            "redis": "ok",
            "workers": Worker.count(connection=redis()),
            "queues": {name: queue(name, redis()).count for name in QUEUE_NAMES},
        }
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("health: Redis unreachable: %s", exc)
        return jsonify({"redis": "unreachable", "error": "Redis is unreachable; jobs cannot be queued or read."}), 503
    return jsonify(body)


@blueprint.get("/metrics")
@params.takes()
def prometheus_metrics():
    return metrics.exposition(redis()), 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}

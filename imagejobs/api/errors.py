"""Answers to errors: always JSON {"error": "one sentence"} with a fitting status, never a traceback."""

import logging

from flask import Flask, jsonify, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from imagejobs import jobs, params, paths
from imagejobs.api.context import settings
from RedisConfig import RedisNotConfigured

log = logging.getLogger("api")
QUEUE_FULL_RETRY_AFTER = 10  # seconds; a full queue drains at hundreds of jobs per second


class TooLarge(RequestEntityTooLarge):
    """413 with a sentence naming the limit that was hit (werkzeug's own says "too large", whichever it was)."""


def error(status: int, message: str):
    return jsonify({"error": message}), status


def bad_request(exc):
    return error(400, str(exc))


def not_found(exc):
    return error(404, str(exc))


def conflict(exc):
    return error(409, str(exc))


def queue_full(exc):
    return jsonify({"error": str(exc)}), 429, {"Retry-After": str(QUEUE_FULL_RETRY_AFTER)}


def http_error(exc: HTTPException):
    messages = {
        404: f"No route {request.path}; /docs lists the routes.",
        405: f"{request.method} is not allowed on {request.path}.",
        413: f"The request is larger than the limit of {settings().max_upload_mb} MB (MAX_UPLOAD_MB).",
    }
    answer = error(
        exc.code or 500, exc.description if isinstance(exc, TooLarge) else messages.get(exc.code, exc.description)
    )
    if exc.code == 405:
        return (*answer, {"Allow": ", ".join(sorted(exc.valid_methods or ()))})
    return answer


def redis_down(exc):
    log.warning("Redis unavailable: %s", exc)
    return error(503, "Redis is unreachable, so jobs cannot be queued or read; try again shortly.")


def internal_error(exc):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "Internal error; the API log has the details.")


HANDLERS = (
    ((params.InvalidParameter, paths.PathRefused), bad_request),
    ((paths.PathNotFound, jobs.JobNotFound), not_found),
    ((jobs.JobEnded,), conflict),
    ((jobs.QueueFull,), queue_full),
    ((HTTPException,), http_error),
    ((RedisConnectionError, RedisTimeoutError, RedisNotConfigured), redis_down),
    ((Exception,), internal_error),
)


def register(app: Flask) -> None:
    for exceptions, handler in HANDLERS:
        for exception in exceptions:
            app.register_error_handler(exception, handler)

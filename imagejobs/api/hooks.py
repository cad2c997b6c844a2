"""What runs around every request: the token check, timing, metrics and one log line."""

import hmac
import logging
import time

from flask import Flask, g, jsonify, request

from imagejobs import metrics
from imagejobs.api.context import settings

log = logging.getLogger("api")
PUBLIC_ROUTES = {"/health", "/", "/actions"}  # and /static/: the page and what it is built from carry no data


def start_timer():
    g.started = time.perf_counter()


def require_token():
    """With API_TOKENS set, every route but the public ones needs `Authorization: Bearer <token>`.

    Every token is compared, in constant time, so the answer's timing tells nothing about them.
    """
    tokens = settings().tokens
    if not tokens or request.path in PUBLIC_ROUTES or request.path.startswith("/static/"):
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    matches = [hmac.compare_digest(given.strip().encode(), token.encode()) for token in tokens]
    if scheme.lower() == "bearer" and any(matches):
        return None
    return (
        jsonify({"error": "This service needs a token: send the header Authorization: Bearer <token>."}),
        401,
        {"WWW-Authenticate": 'Bearer realm="imageapi"'},
    )


def account(response):
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.REQUESTS.labels(request.method, route, response.status_code).inc()
    metrics.LATENCY.labels(route).observe(elapsed)
    log.info(
        "%s %s %d %.1f ms",
        request.method,
        request.full_path.rstrip("?"),
        response.status_code,
        1000 * elapsed,
        extra={"job_id": g.get("job_id", "-"), "action": g.get("action", "-")},
    )
    return response


def register(app: Flask) -> None:
    app.before_request(start_timer)
    app.before_request(require_token)
    app.after_request(account)

"""What runs around every request: who is asking (tokens), timing, metrics and one log line."""

import hmac
import logging
import re
import time
from urllib.parse import parse_qsl, urlencode

from flask import Flask, current_app, g, jsonify, request

from imagejobs import metrics, params
from imagejobs.api.context import redis, settings
from imagejobs.clients import ANONYMOUS, Client

log = logging.getLogger("api")
# And /static/... and /docs/...: the page, the documentation's page and what they are built from carry no data.
PUBLIC_ROUTES = {"/health", "/", "/actions", "/docs"}
PUBLIC_PREFIXES = ("/static/", "/docs/")
# Query parameters whose values are secrets whatever the route (a token sent the wrong way): never logged.
SECRET_NAMES = re.compile(r"token|key|secret|passw|auth|sig|credential|session", re.IGNORECASE)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # any other is counted as "other"


def is_public(path: str) -> bool:
    """Whether a route is open without a token when API_TOKENS is set."""
    return path in PUBLIC_ROUTES or path.startswith(PUBLIC_PREFIXES)


def start_timer():
    g.started = time.perf_counter()


def client_named(clients: dict[str, str], authorization: str) -> str | None:
    """The name of the client whose token `Authorization: Bearer <token>` carries, or None.

    Every token is compared, in constant time, so the answer's timing tells nothing about them.
    """
    scheme, _, given = authorization.partition(" ")
    given = given.strip().encode()
    found = None
    for token, name in clients.items():
        if hmac.compare_digest(given, token.encode()) and scheme.lower() == "bearer":
            found = name
    return found


def identify():
    """Who is asking: with API_TOKENS set, every route but the public ones needs `Authorization: Bearer
    <token>`, and the token names the client; without, everyone is the one anonymous client."""
    if not settings().clients:
        g.client = Client(ANONYMOUS, redis(), sole=True)
        return None
    name = client_named(settings().clients, request.headers.get("Authorization", ""))
    if name is not None:
        g.client = Client(name, redis())
        return None
    if is_public(request.path):
        return None
    return (
        jsonify({"error": "This service needs a token: send the header Authorization: Bearer <token>."}),
        401,
        {"WWW-Authenticate": 'Bearer realm="imageapi"'},
    )


def shown_path() -> str:
    """The request's path and query as the log shows them: the value of any secret-looking parameter hidden."""
    query = [
        (name, "***" if SECRET_NAMES.search(name) else value)
        for name, value in parse_qsl(request.query_string.decode(errors="replace"), keep_blank_values=True)
    ]
    return request.path + (f"?{urlencode(query)}" if query else "")


def account(response):
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    method = request.method if request.method in METHODS else "other"
    metrics.REQUESTS.labels(method, route, response.status_code).inc()
    metrics.LATENCY.labels(route).observe(elapsed)
    client = g.get("client")
    log.info(
        "%s %s %d %.1f ms client=%s",
        request.method[:16],
        shown_path(),
        response.status_code,
        1000 * elapsed,
        client.name if client else "-",
        extra={"job_id": g.get("job_id", "-"), "action": g.get("action", "-")},
    )
    return response


def known_parameters():
    """A query parameter the route does not take, or one given twice, is a 400 naming it (routes say what
    they take with params.takes; the page and its assets take anything; a submit checks its own, where
    imageUrl may repeat)."""
    known = getattr(current_app.view_functions.get(request.endpoint), "takes", None)
    if known is not None:
        params.reject_unknown(request.args.keys(), known)
        params.reject_repeated(request.args, params.REPEATABLE)


def register(app: Flask) -> None:
    app.before_request(start_timer)
    app.before_request(identify)
    app.before_request(known_parameters)
    app.after_request(account)

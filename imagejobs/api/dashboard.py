"""rq-dashboard, inside the API at /rq/: the operators' view of queues, workers and failed jobs.

rq-dashboard alone reads jobs with pickle (this service's jobs are JSON: its job pages failed, and its
Requeue button rewrote jobs so the API could not read them), has no login, and changes state on plain
POSTs (and one GET) that any web page could make a browser send. Here it runs in the API's own
processes, built for JSON jobs, and behind three guards:

- who: without API_TOKENS, the one anonymous client (the API then listens on loopback only); with
  them, only the clients named in DASHBOARD_CLIENTS, by `Authorization: Bearer <token>` or by the
  cookie the dashboard's sign-in form sets (HttpOnly, SameSite=Strict, for /rq only). Others get 403,
  or 401 and the sign-in form when they sent no token at all;
- cross-site requests: a request a browser marks as coming from another site (Sec-Fetch-Site), or
  whose Origin is not this host, is refused (403), so no other page can make it change anything;
- no state changes by GET: the requeue-all route answers POST only.
"""

import html
from urllib.parse import urlsplit

import rq_dashboard
from flask import Flask, Response, abort, current_app, jsonify, request
from redis import Redis
from rq.serializers import JSONSerializer
from rq_dashboard import web

from imagejobs.api import hooks
from imagejobs.config import Settings

PREFIX = "/rq"
COOKIE = "imagejobs_dashboard"
SIGN_IN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>RQ dashboard: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 30rem; margin: 3rem auto">
<h1>RQ dashboard</h1><p>{message}</p>
<form method="post" action="{prefix}/sign-in"><label>Token <input type="password" name="token" autofocus
autocomplete="off"></label> <button type="submit">Sign in</button></form></body></html>"""


def create_dashboard(settings: Settings, redis: Redis) -> Flask:
    """rq-dashboard on the API's own Redis client.

    rq-dashboard makes a client from its URL at start and, before each request of its pages, a new one
    (push_rq_connection: a new connection pool a request); either stays on the Redis named then, so
    after a Sentinel failover it would show the old master. Its hook is replaced by one that hands it
    the API's client, which follows the master (RedisConfig.connect) and reuses its connections."""
    app = Flask("rq_dashboard_in_imagejobs")
    app.config["RQ_DASHBOARD_REDIS_URL"] = "redis://unused"  # setup_rq_connection needs one; never connected
    web.config.serializer = JSONSerializer  # the service's jobs are JSON, never pickle
    web.setup_rq_connection(app)
    app.redis_conn = redis
    app.register_blueprint(rq_dashboard.blueprint)
    hooks_of_dashboard = app.before_request_funcs[rq_dashboard.blueprint.name]
    hooks_of_dashboard[hooks_of_dashboard.index(web.push_rq_connection)] = lambda: use_only_instance(redis)
    app.before_request(lambda: guard(settings))
    app.add_url_rule("/sign-in", "sign_in", lambda: sign_in(settings), methods=["POST"])
    return app


def use_only_instance(redis: Redis) -> None:
    """rq-dashboard's pages name an instance (the index of a Redis in its list): this one has only 0."""
    if request.view_args and request.view_args.get("instance_number") not in (None, 0):
        abort(404)
    current_app.redis_conn = redis


def guard(settings: Settings):
    """None to let the request through; else the answer that refuses it."""
    if cross_site():
        return refuse(403, "The RQ dashboard answers only requests made from its own pages.")
    if request.path.startswith("/requeue/") and request.method == "GET":
        return refuse(405, "Requeue with POST, from the dashboard's own button.")
    if request.path == "/sign-in" or not settings.clients:
        return None
    name = client_named(settings)
    if name is None:
        return sign_in_page(401, "Sign in with the token of a client named in DASHBOARD_CLIENTS.")
    if name not in settings.dashboard_names:
        return refuse(403, f"The RQ dashboard is for the clients named in DASHBOARD_CLIENTS; {name} is not one.")
    return None


def cross_site() -> bool:
    """Whether a browser says the request comes from another site, or its Origin is another host."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc != request.host


def client_named(settings: Settings) -> str | None:
    """The client whose token the request carries, in its Authorization header or the sign-in cookie."""
    cookie = request.cookies.get(COOKIE)
    authorization = request.headers.get("Authorization") or (f"Bearer {cookie}" if cookie else "")
    return hooks.client_named(settings.clients, authorization)


def sign_in(settings: Settings):
    """The sign-in form's POST: a valid token becomes a cookie for /rq only, and back to the dashboard."""
    token = request.form.get("token", "")
    if hooks.client_named(settings.clients, f"Bearer {token}") is None:
        return sign_in_page(401, "That token is not one of this service's; try again.")
    answer = Response(status=303, headers={"Location": f"{request.script_root}/"})
    secure = request.is_secure or request.headers.get("X-Forwarded-Proto") == "https"
    answer.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=secure, path=request.script_root or "/")
    return answer


def sign_in_page(status: int, message: str):
    page = SIGN_IN.format(message=html.escape(message), prefix=html.escape(request.script_root))
    return Response(page, status=status, mimetype="text/html", headers={"Cache-Control": "no-store"})


def refuse(status: int, message: str):
    return jsonify({"error": message}), status

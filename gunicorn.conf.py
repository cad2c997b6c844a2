"""gunicorn settings for the API: `gunicorn -c gunicorn.conf.py RestAPI:app` (the same command in the
container, in run.py and in the end-to-end tests).

The worker class is gevent: each connection is a greenlet of a few KB, not a thread, so clients that
send half a request and stop, or hold `GET /result?wait=30` open, cost memory but never the service's
ability to answer others (with gthread, 2 processes x 16 threads, 34 such clients stopped every route:
bench/slow_clients.py gives the figures). gevent makes redis-py's blocking reads cooperative.
API_CONNECTIONS bounds the connections each process holds at once, and the Redis connections it may open
(a wait holds one for its length).
"""

from gevent import monkey

# Patched before anything imports ssl (redis does, as on_starting waits for Redis in the master): patched later,
# in each worker as gunicorn does, gevent warned "Monkey-patching ssl after ssl has already been imported may
# lead to errors" at every start.
monkey.patch_all()

import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from imagejobs.config import settings  # noqa: E402

bind = f"{settings.listen_host}:{settings.port}"
workers = settings.api_processes
worker_class = "gevent"
worker_connections = settings.api_connections
timeout = 60  # > the longest wait a request may ask for (30 s)
graceful_timeout = 20  # SIGTERM: in-flight requests get this long to finish
# Seconds an idle connection is kept for its next request: gunicorn's default. A stop waits for idle ones to
# close; at 5, Ctrl+C with a browser (or a requests.Session) connected took 6.5 s, at 2 it takes 3.5 s.
keepalive = 2
limit_request_line = 8190  # gunicorn's most; past it gunicorn itself answers 414
accesslog = None  # the app logs one line per request itself
errorlog = "-"
loglevel = "warning"  # gunicorn's own start-up lines (its URL among them) would repeat what the service says
control_socket_disable = True  # gunicorn's runtime control socket (in $HOME by default): the service uses none

# Counters of several processes add up only through files in a shared folder (prometheus_client's multiprocess mode).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="imageapi-metrics-"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server):
    """Refuse to start (one line) on folders the API cannot write; log like every other process; wait for
    Redis (RedisConfig.wait_for_redis) before the workers build the app, which connects to it."""
    from imagejobs import startup
    from log import setup_logging
    from RedisConfig import RedisNotConfigured, RedisUnreachable, wait_for_redis

    try:
        startup.check_writable([settings.images_root, settings.logs_dir])
    except startup.CannotStart as exc:
        raise SystemExit(f"api: {exc}") from None
    setup_logging("api")
    try:
        wait_for_redis(settings)
    except (RedisNotConfigured, RedisUnreachable) as exc:
        raise SystemExit(f"api: {exc}") from None


def when_ready(server):
    """Say at start who can reach the API."""
    log = logging.getLogger("api")
    if settings.tokens:
        log.info("API_TOKENS set: every route but /, /actions and /health needs a bearer token; listening on %s", bind)
    elif settings.listen_host in ("127.0.0.1", "::1", "localhost"):
        log.info("No API_TOKENS: listening on %s only; set API_TOKENS (and BIND_HOST) to serve other machines", bind)
    else:
        log.warning("No API_TOKENS but BIND_HOST=%s: anyone who reaches %s can use the API", settings.listen_host, bind)


def post_worker_init(worker):
    """In each worker, once gevent has patched it and the app is loaded: the log, and gunicorn's own
    answers to malformed HTTP (a request line or headers too long, bad framing) in JSON, as every other
    error of the service is. (Nothing of the app may be imported before: gevent patches first.)"""
    from imagejobs.api import server_errors
    from log import setup_logging

    setup_logging("api")
    server_errors.install()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

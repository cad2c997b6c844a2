"""gunicorn settings for the API: `gunicorn -c gunicorn.conf.py RestAPI:app` (the same command in the
container, in run.py and in the end-to-end tests).

Threads matter more than processes here: a `GET /result?wait=30` holds its thread in a blocking Redis
read, so each process serves many requests at once with the gthread worker.
"""

import os
import tempfile

from imagejobs.config import settings

bind = f"{settings.listen_host}:{settings.port}"
workers = int(os.environ.get("API_PROCESSES", "2"))
worker_class = "gthread"
threads = int(os.environ.get("API_THREADS", "16"))
timeout = 60  # > the longest wait a request may ask for (30 s)
graceful_timeout = 20  # SIGTERM: in-flight requests get this long to finish
keepalive = 5
limit_request_line = 8190  # gunicorn's most; past it gunicorn itself answers 414 (the one non-JSON error)
accesslog = None  # RestAPI logs one line per request itself
errorlog = "-"

# Counters of several processes add up only through files in a shared folder (prometheus_client's multiprocess mode).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="imageapi-metrics-"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def when_ready(server):
    """Say at start who can reach the API."""
    if settings.tokens:
        server.log.info("API_TOKENS set: every route but /health needs a bearer token; listening on %s", bind)
    elif settings.listen_host in ("127.0.0.1", "::1", "localhost"):
        server.log.info(
            "No API_TOKENS: listening on %s only; set API_TOKENS (and BIND_HOST) to serve other machines", bind
        )
    else:
        server.log.warning(
            "No API_TOKENS but BIND_HOST=%s: anyone who reaches %s can use the API", settings.listen_host, bind
        )


def post_worker_init(worker):
    from log import setup_logging

    setup_logging("api")


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)

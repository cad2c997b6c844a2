"""The Redis connection and the RQ queues, from REDIS_URL.

Jobs are (de)serialized as JSON, never pickle: whoever can write to Redis must not be able to make a
worker run code. Connections retry with backoff, so a Redis restart is ridden out, not fatal.
"""

from functools import cache
from urllib.parse import quote, urlsplit, urlunsplit

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from rq import Queue
from rq.serializers import JSONSerializer

from imagejobs.config import Settings, settings

IMAGES_QUEUE = "images"  # size, resize, plot: the Pillow workers
CLASSIFY_QUEUE = "classify"  # classify: the TensorFlow worker
QUEUE_NAMES = (IMAGES_QUEUE, CLASSIFY_QUEUE)
SERIALIZER = JSONSerializer

# Longer than the longest blocking read the API makes (a 30 s wait for a result).
SOCKET_TIMEOUT = 40


class RedisNotConfigured(RuntimeError):
    pass


def redis_url(configured: Settings = settings) -> str:
    """REDIS_URL, with the password from REDIS_PASSWORD_FILE when the URL has none; refused when unset, or
    without a password when REQUIRE_REDIS_AUTH asks for one."""
    url = configured.redis_url
    if not url:
        raise RedisNotConfigured(
            "REDIS_URL is not set: start the service with `python run.py`, which starts an embedded Redis, "
            "or set REDIS_URL"
        )
    parts = urlsplit(url)
    if configured.redis_password_file and parts.password is None:
        url = urlunsplit(
            parts._replace(netloc=f":{quote(_password(configured.redis_password_file), safe='')}@{parts.netloc}")
        )
    if configured.require_redis_auth and not urlsplit(url).password:
        raise RedisNotConfigured(f"REQUIRE_REDIS_AUTH is set but REDIS_URL ({url}) has no password")
    return url


def _password(path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise RedisNotConfigured(f"REDIS_PASSWORD_FILE {path} cannot be read ({exc.strerror})") from None


def redacted(url: str) -> str:
    """The URL with its password hidden, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def connect(configured: Settings, max_connections: int | None = None) -> Redis:
    """A Redis client (a thread-safe pool of at most max_connections, redis-py's 100 by default) for these
    settings. The password comes from the URL."""
    return Redis.from_url(
        redis_url(configured),
        max_connections=max_connections,
        socket_connect_timeout=2,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
    )


@cache
def connection() -> Redis:
    """The process's one Redis client, from the environment's settings (workers; the API has its app's)."""
    return connect(settings)


def queue(name: str, redis: Redis | None = None) -> Queue:
    return Queue(name, connection=redis or connection(), serializer=SERIALIZER)

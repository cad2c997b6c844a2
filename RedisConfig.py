"""The Redis connection and the RQ queues, from REDIS_URL, or from REDIS_SENTINELS.

Jobs are (de)serialized as JSON, never pickle: whoever can write to Redis must not be able to make a
worker run code. Connections retry with backoff, so a Redis restart is ridden out, not fatal.

With REDIS_SENTINELS, the client is redis-py's Sentinel master_for(REDIS_SENTINEL_MASTER): before each
new connection its SentinelConnectionPool asks the sentinels which server is the master now. After a
failover a command on the old master fails (refused, reset, or READONLY once it is back as a replica,
which redis-py turns into a ConnectionError), the same retry with backoff reconnects, and the new
connection goes to the master the sentinels name then; idle connections to the old one are dropped as
soon as a new address is seen. A failover outlasts those retries (~0.7 s; it takes the sentinels'
down-after-milliseconds and a second or two more), so what runs meanwhile fails as during a Redis
restart: the API answers 503, idle workers retry, a job in flight is run again. REDIS_URL then gives only
the password, user, database and scheme.
"""

import time
from functools import cache
from urllib.parse import quote, urlsplit, urlunsplit

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel
from rq import Queue
from rq.serializers import JSONSerializer

from imagejobs.config import Settings, settings

IMAGES_QUEUE = "images"  # size, resize, plot: the Pillow workers
CLASSIFY_QUEUE = "classify"  # classify: the TensorFlow worker
QUEUE_NAMES = (IMAGES_QUEUE, CLASSIFY_QUEUE)
SERIALIZER = JSONSerializer

# Longer than the longest blocking read the API makes (a 30 s wait for a result).
SOCKET_TIMEOUT = 40
# A sentinel answers at once or is passed over for the next one (each is asked once per new connection).
SENTINEL_TIMEOUT = 2


class RedisNotConfigured(RuntimeError):
    pass


class PasswordNotWritten(RedisNotConfigured):
    """REDIS_PASSWORD_FILE does not exist (yet: in the containers the redis-password service writes it)."""


class RedisUnreachable(RuntimeError):
    """No sentinel of REDIS_SENTINELS could name a master (they are down, or a failover is under way)."""


def redis_url(configured: Settings = settings) -> str:
    """REDIS_URL, with the password from REDIS_PASSWORD_FILE when the URL has none; refused when unset, or
    without a password when REQUIRE_REDIS_AUTH asks for one.

    With REDIS_SENTINELS: the URL of the server the sentinels name master now (RedisUnreachable if none
    does), for what takes a plain URL (run.py's check, the dashboard); such a URL does not follow a
    failover, the clients of connect() do."""
    url = _url(configured)
    if not configured.sentinel_addresses:
        return url
    host, port = current_master(configured)
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    address = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{auth}@{address}:{port}" if auth else f"{address}:{port}"))


def _url(configured: Settings) -> str:
    """REDIS_URL with its password (REDIS_PASSWORD_FILE's when it has none), as configured."""
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
    except FileNotFoundError:
        raise PasswordNotWritten(f"REDIS_PASSWORD_FILE {path} does not exist") from None
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
    settings. The password comes from the URL. With REDIS_SENTINELS, the master's client from the
    sentinels, with the same timeouts, retries and pool size; nothing is asked of them until it is used."""
    options = {
        "max_connections": max_connections,
        "socket_connect_timeout": 2,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    if not configured.sentinel_addresses:
        return Redis.from_url(redis_url(configured), **options)
    client = _client_options(_url(configured))
    return sentinels(configured).master_for(configured.redis_sentinel_master, **{**options, **client})


def sentinels(configured: Settings) -> Sentinel:
    """A client of the sentinels of REDIS_SENTINELS. Their password: REDIS_SENTINEL_PASSWORD, else Redis's
    own (empty: none). rediss:// in REDIS_URL means TLS to them too. Each is asked once, without a retry of
    its own: a sentinel that does not answer is passed over for the next one."""
    client = _client_options(_url(configured))
    own = configured.redis_sentinel_password
    password = client.get("password") if own is None else own
    tls = {key: value for key, value in client.items() if key == "ssl" or key.startswith("ssl_")}
    return Sentinel(
        configured.sentinel_addresses,
        sentinel_kwargs={
            "password": password or None,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_timeout": SENTINEL_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
            **tls,
        },
    )


def current_master(configured: Settings) -> tuple[str, int]:
    """(host, port) of the master the sentinels name now; RedisUnreachable when none of them does."""
    with sentinels(configured) as sentinel:
        try:
            return sentinel.discover_master(configured.redis_sentinel_master)
        except (ConnectionError, TimeoutError):  # MasterNotFoundError is a ConnectionError
            listed = ", ".join(f"{host}:{port}" for host, port in configured.sentinel_addresses)
            reasons = "; ".join(_why(client, configured.redis_sentinel_master) for client in sentinel.sentinels)
            raise RedisUnreachable(
                f"no sentinel of REDIS_SENTINELS ({listed}) names a master for "
                f"{configured.redis_sentinel_master!r} ({reasons})"
            ) from None


def _why(sentinel: Redis, name: str) -> str:
    """Why this sentinel names no master for name, in a few words (redis-py's own message is a page)."""
    where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
    try:
        state = sentinel.sentinel_masters().get(name)
    except Exception as exc:
        return f"{where}: {exc}"
    if state is None:
        return f"{where}: monitors no master of that name"
    return f"{where}: its master {state['ip']}:{state['port']} is {state['flags']}"


def _client_options(url: str) -> dict:
    """What REDIS_URL says besides its host and port (password, user, database, TLS and its query options),
    as redis-py's keyword arguments, for the sentinels' master."""
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise RedisNotConfigured(f"with REDIS_SENTINELS, REDIS_URL ({redacted(url)}) must be redis:// or rediss://")
    options = parse_url(url)
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options


def wait_for_redis(configured: Settings = settings) -> None:
    """Return once Redis answers PING; RedisUnreachable with the last reason after REDIS_START_TIMEOUT seconds.

    A process starts before Redis can answer it wherever something else starts them side by side: podman
    4.3 ignores compose's `condition: service_healthy`, and the redis-password service may not have written
    the password file yet. Waiting here makes that order not matter; a misconfiguration (REDIS_URL unset,
    a password file that cannot be read) still stops the process at once."""
    deadline = time.monotonic() + configured.redis_start_timeout
    while True:
        try:
            with connect(configured) as client:
                client.ping()
            return
        except (PasswordNotWritten, RedisUnreachable, ConnectionError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise RedisUnreachable(
                    f"Redis did not answer within REDIS_START_TIMEOUT ({configured.redis_start_timeout} s): {exc}"
                ) from None
            time.sleep(0.5)


@cache
def connection() -> Redis:
    """The process's one Redis client, from the environment's settings (workers; the API has its app's)."""
    return connect(settings)


def queue(name: str, redis: Redis | None = None) -> Queue:
    return Queue(name, connection=redis or connection(), serializer=SERIALIZER)

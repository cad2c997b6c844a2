"""Calling back when a job ends: a submit's callbackUrl is POSTed the job's answer (the JSON GET /result
would give) once the job has finished, failed or been canceled.

- Signed: the header X-Imagejobs-Signature is `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>` under
  the client's callback secret (GET /callbacks/secret gives a client its own). A receiver recomputes it,
  compares in constant time, and refuses an old t (docs/operations.md shows how).
- Safe: the URL obeys the rules of imageUrl (downloads.py): refused when it is given if it leads to a
  private, loopback or link-local address (unless ALLOWED_URL_NETWORKS allows it), and checked again, on
  the address it connects to, at every attempt; no redirect is followed.
- Durable and patient: a delivery due is a member of a Redis sorted set (scored by when it is due), so it
  survives a restart; a receiver that is down or answers an error is tried again with back-off (1 s,
  doubling, at most a minute apart) for CALLBACK_RETRY_SECONDS, then the delivery is given up.
- Out of the way: each worker process delivers from COURIERS threads of its own (Courier), woken by Redis
  when a delivery is scheduled or comes due; a slow or failing receiver holds one of those threads, never
  a job, a worker, or the other deliveries.
- Once: a job schedules its delivery once, however many times it is told it ended (a cancel, then the end
  of the image it was making); a courier takes a delivery and its lease in one step (a Lua script), and
  one already delivered or given up is never sent again.

The outcome is on the job: GET /result/ID shows "callback": {"url", "status": pending, delivered or failed,
"attempts", "lastStatus", "lastError", "deliveredAt"}.

Keys:
  imagejob:callbacks          sorted set: job id -> when its delivery is due (or when a lease runs out)
  imagejob:callbacks-wake     list: a token per delivery scheduled, which a waiting courier pops to wake
  imagejob:callback:<jobId>   hash: url, client, status, attempts, firstAt, lastStatus, lastError, deliveredAt
  imagejob:callback-secret    the service's secret, when CALLBACK_SECRET is not set (made once, kept)
"""

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from datetime import UTC, datetime

from redis import Redis
from rq.job import Job

from imagejobs import downloads
from imagejobs.config import Settings

log = logging.getLogger(__name__)

DUE = "imagejob:callbacks"
WAKE = "imagejob:callbacks-wake"
WAKE_MAXLEN = 64  # tokens kept: one wakes a courier, which then delivers everything due before it waits
IDLE_WAIT = 5.0  # seconds a courier waits for a token when nothing is due
COURIERS = 4  # delivering threads a worker process runs: a slow receiver (up to 15 s an attempt) holds one,
# and the others go on delivering everyone else's callbacks
SECRET_KEY = "imagejob:callback-secret"
HEADER = "X-Imagejobs-Signature"
LEASE = 60  # seconds a courier holds a delivery it took; past it (the courier died), another takes it
FIRST_RETRY, MOST_RETRY = 1.0, 60.0  # seconds between attempts: doubling from the first, at most the most
ENDED = ("finished", "failed", "canceled")  # the statuses a callback reports; before them, it waits
ENDING_PAUSE = 0.1  # seconds: a job scheduled its callback but has not yet recorded its end


def state_key(job_id: str) -> str:
    return f"imagejob:callback:{job_id}"


def service_secret(redis: Redis, settings: Settings) -> bytes:
    """CALLBACK_SECRET, or the one made on first use and kept in Redis (so every process shares it)."""
    if settings.callback_secret:
        return settings.callback_secret.encode()
    redis.set(SECRET_KEY, secrets.token_hex(32), nx=True)
    return redis.get(SECRET_KEY)


def client_secret(redis: Redis, settings: Settings, client: str) -> str:
    """A client's own callback secret: derived from the service's, so nothing per client is stored."""
    return hmac.new(service_secret(redis, settings), f"callback:{client}".encode(), hashlib.sha256).hexdigest()


def signature(secret: str, body: bytes, at: int) -> str:
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def check_url(url: str, settings: Settings) -> str:
    """The callbackUrl as given, once its syntax is right and where it leads may be reached (DownloadError)."""
    return downloads.check_destination(url, settings.url_networks)


# Schedule a delivery unless the job has one already (its state hash exists): KEYS state, due, wake;
# ARGV url, client, seconds to keep the state, due time, job id, tokens kept.
_SCHEDULE = """
if redis.call('HSETNX', KEYS[1], 'status', 'pending') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'url', ARGV[1], 'client', ARGV[2], 'attempts', 0)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('LTRIM', KEYS[3], 0, ARGV[6] - 1)
return 1
"""
# Take the delivery due first and lease it, in one step: KEYS due; ARGV now, lease end.
# Returns {job id} when one was due, {false, when the next is due} when none is, {} when there is none.
_TAKE = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return {} end
if tonumber(first[2]) > tonumber(ARGV[1]) then return {false, first[2]} end
redis.call('ZADD', KEYS[1], ARGV[2], first[1])
return {first[1]}
"""


def schedule(pipeline, job: Job, settings: Settings) -> None:
    """Add, in the caller's pipeline, the delivery of the job's answer, due now, unless the job has one
    already (a job without a callback: nothing). Called as the job ends: finished, failed for good, or
    canceled (a canceled job that was running ends again when its image is done: still one delivery)."""
    url = job.meta.get("callbackUrl")
    if not url:
        return
    keep = settings.result_ttl + settings.callback_retry_seconds
    pipeline.eval(
        _SCHEDULE,
        3,
        state_key(job.id),
        DUE,
        WAKE,
        url,
        job.meta.get("client", ""),
        keep,
        time.time(),
        job.id,
        WAKE_MAXLEN,
    )


def outcome(redis: Redis, job: Job) -> dict | None:
    """What the job's answer says of its callback (None for a job without one)."""
    if not job.meta.get("callbackUrl"):
        return None
    stored = {key.decode(): value.decode() for key, value in redis.hgetall(state_key(job.id)).items()}
    shown = {"url": job.meta["callbackUrl"], "status": stored.get("status", "pending")}
    shown["attempts"] = int(stored.get("attempts", 0))
    for name in ("lastStatus", "lastError", "deliveredAt"):
        if stored.get(name):
            shown[name] = int(stored[name]) if name == "lastStatus" else stored[name]
    return shown


class Courier(threading.Thread):
    """A worker process's deliverer of callbacks: it takes the delivery that is due first, holds it under a
    lease while it calls the receiver, and settles it: delivered, due again later, or given up."""

    def __init__(self, redis: Redis, settings: Settings, answer):
        """answer(job_id): the job's answer, as GET /result gives it (KeyError-like LookupError once it is gone)."""
        super().__init__(name="callbacks", daemon=True)
        self.redis, self.settings, self.answer = redis, settings, answer

    def run(self) -> None:
        while True:
            try:
                self.deliver_next()
            except Exception:  # Redis blinked, or a surprise: this thread must go on
                log.exception("callback delivery failed; going on")
                time.sleep(1)

    def deliver_next(self) -> None:
        """Deliver the delivery due first, if one is; else wait for a token (a delivery scheduled) or for
        the next one to come due, whichever is sooner."""
        taken = self.redis.eval(_TAKE, 1, DUE, time.time(), time.time() + LEASE)
        if taken and taken[0]:
            self.attempt(taken[0].decode())
            return
        wait = IDLE_WAIT if not taken else min(IDLE_WAIT, max(float(taken[1]) - time.time(), 0.01))
        self.redis.blpop([WAKE], timeout=wait)

    def attempt(self, job_id: str) -> None:
        stored = {key.decode(): value.decode() for key, value in self.redis.hgetall(state_key(job_id)).items()}
        if not stored.get("url") or stored.get("status") in ("delivered", "failed"):  # expired, or settled
            self.redis.zrem(DUE, job_id)
            return
        try:
            answer = self.answer(job_id)
        except LookupError:  # the job itself expired: nothing left to say
            self.settle(job_id, stored, "failed", error="The job expired before its answer could be delivered.")
            return
        if answer["status"] not in ENDED:  # RQ runs a failure callback before it records the failure
            self.redis.zadd(DUE, {job_id: time.time() + ENDING_PAUSE})
            return
        body = json.dumps(answer, separators=(",", ":")).encode()
        at = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "imagejobs-callbacks",
            "X-Imagejobs-Job": job_id,
            HEADER: signature(client_secret(self.redis, self.settings, stored.get("client", "")), body, at),
        }
        try:
            status = downloads.post(
                stored["url"],
                body,
                headers,
                allowed_networks=self.settings.url_networks,
                connect_timeout=self.settings.url_connect_timeout,
                read_timeout=self.settings.url_read_timeout,
            )
            error = None if 200 <= status < 300 else f"The receiver answered {status}."
        except downloads.DownloadError as exc:
            status, error = None, str(exc)
        if error is None:
            self.settle(job_id, stored, "delivered", answered=status)
        else:
            self.retry(job_id, stored, status, error)

    def retry(self, job_id: str, stored: dict, status: int | None, error: str) -> None:
        attempts = int(stored.get("attempts", 0)) + 1
        first = float(stored.get("firstAt") or time.time())
        pause = min(MOST_RETRY, FIRST_RETRY * 2 ** (attempts - 1))
        if time.time() + pause - first > self.settings.callback_retry_seconds:
            self.settle(job_id, stored, "failed", answered=status, error=error)
            return
        with self.redis.pipeline() as pipe:
            pipe.hset(
                state_key(job_id), mapping=_fields(attempts=attempts, firstAt=first, lastStatus=status, lastError=error)
            )
            pipe.zadd(DUE, {job_id: time.time() + pause})
            pipe.execute()
        log.info("callback of job %s: attempt %d failed (%s); again in %.0f s", job_id, attempts, error, pause)

    def settle(
        self, job_id: str, stored: dict, status: str, answered: int | None = None, error: str | None = None
    ) -> None:
        attempts = int(stored.get("attempts", 0)) + 1
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        settled = {"status": status, "attempts": attempts, "lastError": error or ""}
        if status == "delivered":
            settled["deliveredAt"] = at
        with self.redis.pipeline() as pipe:
            pipe.hset(state_key(job_id), mapping=_fields(**settled, lastStatus=answered))
            pipe.zrem(DUE, job_id)
            pipe.execute()
        log.info("callback of job %s %s after %d attempts", job_id, status, attempts)


def _fields(**values) -> dict:
    return {name: value for name, value in values.items() if value is not None}

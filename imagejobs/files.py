"""Files a job makes that live in Redis beside its result (plots), under the same TTL."""

from redis import Redis


def _key(job_id: str) -> str:
    return f"imagejob:file:{job_id}"


def save(redis: Redis, job_id: str, data: bytes, media_type: str, ttl: int) -> None:
    with redis.pipeline() as pipe:
        pipe.hset(_key(job_id), mapping={"data": data, "type": media_type})
        pipe.expire(_key(job_id), ttl)
        pipe.execute()


def load(redis: Redis, job_id: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of the job's file, or None once it expired or if there was none."""
    stored = redis.hgetall(_key(job_id))
    if not stored:
        return None
    return stored[b"data"], stored[b"type"].decode()

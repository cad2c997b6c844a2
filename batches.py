"""The Redis record of a batch: one entry per image, written by whichever chunk job ran it.

Entries are stored by image index, so a chunk that runs twice (its worker died and RQ retried it)
overwrites its own entries instead of counting them again: progress can never double-count.

Keys, all expiring with the batch:
  imagejob:batch:<id>          hash: total, chunks, startedAt
  imagejob:batch:<id>:entries  hash: image index -> entry JSON ({"image", "result"} or {"image", "error"})
  imagejob:batch:<id>:failed   set of indexes whose entry is an error
  imagejob:batch:<id>:chunks   set of chunk numbers that have ended
"""
import json
from datetime import datetime, timezone

from redis import Redis

# Long enough for a batch of thousands of images to run; the finished result then lives RESULT_TTL.
BATCH_KEY_TTL = 7 * 24 * 3600


def _key(batch_id: str, part: str = "") -> str:
    return f"imagejob:batch:{batch_id}" + (f":{part}" if part else "")


def create(redis: Redis, batch_id: str, total: int, chunks: int, pipeline=None) -> None:
    pipe = pipeline if pipeline is not None else redis.pipeline()
    pipe.hset(_key(batch_id), mapping={"total": total, "chunks": chunks})
    pipe.expire(_key(batch_id), BATCH_KEY_TTL)
    if pipeline is None:
        pipe.execute()


def mark_started(redis: Redis, batch_id: str) -> None:
    redis.hsetnx(_key(batch_id), "startedAt", datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))


def record(redis: Redis, batch_id: str, index: int, entry: dict) -> None:
    """Store one image's entry; idempotent, so a re-run chunk rewrites rather than adds."""
    with redis.pipeline() as pipe:
        pipe.hset(_key(batch_id, "entries"), str(index), json.dumps(entry))
        if "error" in entry:
            pipe.sadd(_key(batch_id, "failed"), index)
        else:
            pipe.srem(_key(batch_id, "failed"), index)
        for part in ("entries", "failed"):
            pipe.expire(_key(batch_id, part), BATCH_KEY_TTL)
        pipe.execute()


def end_chunk(redis: Redis, batch_id: str, chunk: int) -> bool:
    """Note that a chunk has ended; True when every chunk of the batch now has."""
    with redis.pipeline() as pipe:
        pipe.sadd(_key(batch_id, "chunks"), chunk)
        pipe.expire(_key(batch_id, "chunks"), BATCH_KEY_TTL)
        pipe.scard(_key(batch_id, "chunks"))
        pipe.hget(_key(batch_id), "chunks")
        _, _, ended, chunks = pipe.execute()
    return chunks is not None and ended >= int(chunks)


def progress(redis: Redis, batch_id: str) -> dict | None:
    """{"done", "failed", "total"}: done counts images that succeeded. None if the batch is unknown."""
    with redis.pipeline() as pipe:
        pipe.hget(_key(batch_id), "total")
        pipe.hlen(_key(batch_id, "entries"))
        pipe.scard(_key(batch_id, "failed"))
        total, entries, failed = pipe.execute()
    if total is None:
        return None
    return {"done": entries - failed, "failed": failed, "total": int(total)}


def started_at(redis: Redis, batch_id: str) -> str | None:
    value = redis.hget(_key(batch_id), "startedAt")
    return value.decode() if value else None


def collect(redis: Redis, batch_id: str, images: list[str]) -> list[dict]:
    """Every image's entry in order; an image no chunk recorded (its job failed for good) gets an error."""
    stored = redis.hgetall(_key(batch_id, "entries"))
    lost = "It was not processed: the job holding it failed (see the worker log); submit it again."
    return [
        json.loads(stored[str(index).encode()]) if str(index).encode() in stored else {"image": image, "error": lost}
        for index, image in enumerate(images)
    ]


def discard(batch_id: str, pipeline) -> None:
    """Delete the record of a batch that was refused before it started."""
    pipeline.delete(*(_key(batch_id, part) for part in ("", "entries", "failed", "chunks")))


def expire(redis: Redis, batch_id: str, seconds: int) -> None:
    """Let the working record go with the batch's result; kept till then so the batch job stays idempotent."""
    with redis.pipeline() as pipe:
        for part in ("", "entries", "failed", "chunks"):
            pipe.expire(_key(batch_id, part), seconds)
        pipe.execute()

"""Work already done is not done again: a folder (or a file) submitted again with the same action and
parameters reuses each image's earlier result while the image has not changed since.

An image is unchanged when its size, modification and change times and inode are those recorded; when
only its times differ (touched, copied back, restored from a backup) and its size is the same, a content
hash (BLAKE3, recorded with the result) decides. A result that names a file (a thumbnail) is reused only
while that file is still the one made then (its size and modification time). A classification is
reused only for the same model (the action's reuse key says which). `force=true` redoes everything.
Inputs the service made for a job (uploads, downloads) are never reused: they are new each time.

What is remembered is kept per client in Redis (so it survives a restart, with Redis's AOF), at most
REUSE_MAX_ENTRIES entries a client, the least recently used going first:

  imagejob:reuse:<client>      hash: entry id -> JSON {"source": identity, "digest", "result", "made": identity}
  imagejob:reuse-lru:<client>  sorted set: entry id -> when it was last used
An entry id is a hash of the action, its parameters, its reuse key and the image's path.
"""

import hashlib
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import blake3
from redis import Redis
from redis.exceptions import RedisError

from imagejobs import inputs, paths

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


def _keys(client: str) -> tuple[str, str]:
    return f"imagejob:reuse:{client}", f"imagejob:reuse-lru:{client}"


def entry_id(action: str, params: dict, key: str, image: str) -> str:
    """The id of an image's remembered result: the same for the same action, parameters, key and path."""
    parts = json.dumps([action, {k: v for k, v in sorted(params.items()) if k != "force"}, key, image])
    return hashlib.blake2b(parts.encode(), digest_size=16).hexdigest()


def reusable(image: str) -> bool:
    """Whether an image may have a remembered result: a path under the root, not a URL nor a job's input."""
    return "://" not in image and inputs.job_of(image) is None


def identity(path: Path | str, follow: bool = True) -> list[int] | None:
    """What tells a file has not changed: size, modification and change times, inode; None if it is gone.
    follow=False: of the path itself, so a link put in a file's place never matches the file."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def digest(path: Path) -> str:
    """The file's content hash, "blake3:" and its hex. A first run hashes every image it makes a record for:
    BLAKE3 (SIMD) took 0.105 ms for a 436 KB JPEG where SHA-256 on the CPU's SHA instructions took 0.274 and
    BLAKE2b 0.528, and about 0.7 ms for a 12 MP photo's 2.9 MB against 1.8. A record hashed by the SHA-256
    of releases before never matches: that image is made again, once."""
    hasher = blake3.blake3()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            hasher.update(chunk)
    return f"blake3:{hasher.hexdigest()}"


def recall(redis: Redis, client: str, ids: list[str]) -> list[dict | None]:
    """The remembered records of these entry ids (None where there is none), in one round trip."""
    if not ids:
        return []
    return [json.loads(value) if value else None for value in redis.hmget(_keys(client)[0], ids)]


def still_valid(record: dict, root: Path, image: str, folders: dict[str, bool]) -> bool:
    """Whether a remembered result still holds for the image as it is now (see the module's docstring).

    The cheap check stats root/image as the path reads, without resolving its links one by one (a
    quarter of a re-run's time went there): a record exists only for a file the processor resolved
    inside the root, and one that passes must be that very file (its inode, size and times), wherever a
    link now leads. Only the content check, which reads the file, resolves the path first. A file made
    (a thumbnail) must be that very file, not a link, in a folder whose real path is inside the root
    (folders: what was found for each folder, so a folder of 10,000 thumbnails is resolved once)."""
    now = identity(os.path.join(root, image))
    if now is None:
        return False
    if now != record["source"]:
        source = _source(root, image)
        if source is None or now[0] != record["source"][0] or digest(source) != record["digest"]:
            return False
        record["source"] = now  # the same content: remembered with its new times
        record["changed"] = True
    made = record["result"].get("path") if isinstance(record["result"], dict) else None
    if made is None:
        return True
    folder = os.path.dirname(os.path.join(root, made))
    if folder not in folders:
        real = paths.real(Path(folder))
        folders[folder] = real is not None and real.is_relative_to(root)
    return folders[folder] and identity(os.path.join(root, made), follow=False) == record.get("made")


def remember(redis: Redis, client: str, most: int, used: dict[str, dict]) -> None:
    """Mark records (entry id -> record) used, write those new or changed, and forget the least recently
    used beyond most. A record reused as it was is not written again: a re-run only touches its LRU."""
    if not used:
        return
    table, lru = _keys(client)
    written = {entry: record for entry, record in used.items() if record.pop("changed", True)}
    with redis.pipeline() as pipe:
        if written:
            pipe.hset(table, mapping={entry: json.dumps(record) for entry, record in written.items()})
        pipe.zadd(lru, dict.fromkeys(used, time.time()))
        pipe.zcard(lru)
        *_, count = pipe.execute()
    if count > most:
        evicted = [member for member, _ in redis.zpopmin(lru, count - most)]
        if evicted:
            redis.hdel(table, *evicted)


def record_of(source: Path, result: dict, root: Path, worked: list[int] | None) -> dict | None:
    """What to remember of a result just made from source, whose identity was `worked` as the work began.
    None when the source is gone, or was replaced while it was worked (the result may be of the old file,
    and remembered with the new file's identity it would be reused for content it never saw)."""
    content = digest(source) if worked is not None else None
    if worked is None or identity(source) != worked:
        return None
    made = result.get("path") if isinstance(result, dict) else None
    return {
        "source": worked,
        "digest": content,
        "result": result,
        "made": identity(root / made) if made else None,
    }


def entries(action, work):
    """The action's entries for the work's images, in order: a remembered result for each image that has one
    still valid (marked "reused": true), the processor's for the others (remembered as they come).

    For an action without a reuse key (a plot: one result over all the images), the processor's alone.
    """
    if action.reuse_key is None:
        yield from action.process(work)
        return
    settings, root = work.settings, work.settings.images_root
    key = action.reuse_key(settings)
    own = {name: value for name, value in work.params.items() if name not in action.summary_params}
    ids = {index: entry_id(action.name, own, key, image) for index, image in enumerate(work.images)}
    ids = {index: entry for index, entry in ids.items() if reusable(work.images[index])}
    ready, kept, folders = {}, {}, {}
    if not work.params.get("force"):
        for (index, entry), record in zip(ids.items(), recall(work.redis, work.client, list(ids.values()))):
            if record is not None and still_valid(record, root, work.images[index], folders):
                ready[index] = {"image": work.images[index], "result": record["result"], "reused": True}
                record.setdefault("changed", False)  # True when only its times changed (still_valid)
                kept[entry] = record
    todo = [image for index, image in enumerate(work.images) if index not in ready]
    worked = {index: identity(os.path.join(root, work.images[index])) for index in ids if index not in ready}
    fresh = iter(action.process(replace(work, images=todo)))  # a processor returns any iterable
    try:
        for index, image in enumerate(work.images):
            if index in ready:
                yield ready[index]
                continue
            entry = {**next(fresh), "reused": False}
            if "result" in entry and index in ids and (source := _source(root, image)) is not None:
                if (record := record_of(source, entry["result"], root, worked[index])) is not None:
                    kept[ids[index]] = record
            yield entry
    finally:
        try:
            remember(work.redis, work.client, settings.reuse_max_entries, kept)
        except RedisError as exc:  # remembering saves later work; failing to must not fail this job
            log.warning("reuse: %d results not remembered (%s)", len(kept), exc)


def _source(root: Path, image: str) -> Path | None:
    try:
        return paths.resolve(root, image)
    except (paths.PathRefused, paths.PathNotFound):
        return None

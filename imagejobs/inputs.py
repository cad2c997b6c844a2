"""The inputs the service makes for a job: uploads (<root>/uploads/<jobId>/) and downloaded image URLs
(<root>/downloads/<jobId>/). Who they belong to, and how long they are kept.

Each input folder is named after its job and belongs to the client that submitted it: a record in
Redis says whose it is, for as long as the folder is kept. A folder is deleted INPUT_TTL seconds
(default RESULT_TTL + 1 h) after it was made, once its job has ended or expired; the thumbnails made
from it (under resized/) are the product and stay. Workers sweep, one at a time, once a minute.

Key: imagejob:input:<jobId>   string: the client's name; expires with the folder
"""

import itertools
import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from imagejobs import jobs, paths
from imagejobs.config import Settings
from RedisConfig import SERIALIZER

log = logging.getLogger(__name__)

FOLDERS = (paths.UPLOADS_DIR, paths.DOWNLOADS_DIR)
SWEEP_LOCK = "imagejob:input-sweep"
SWEEP_EVERY = 60  # seconds between two sweeps, whichever worker makes them


def _key(job_id: str) -> str:
    return f"imagejob:input:{job_id}"


def job_of(relative: str) -> str | None:
    """The job whose input a path (relative to the root) is, or holds the thumbnail of: uploads/<id>/...,
    downloads/<id>/..., or the same under resized/. None for any other path."""
    parts = PurePosixPath(relative).parts
    if parts[:1] == (paths.RESIZED_DIR,):
        parts = parts[1:]
    return parts[1] if len(parts) >= 2 and parts[0] in FOLDERS else None


def record_owner(redis: Redis, job_id: str, client: str, settings: Settings, pipeline=None) -> None:
    (pipeline or redis).set(_key(job_id), client, ex=settings.inputs_ttl)


def owners(redis: Redis, job_ids: list[str]) -> dict[str, str | None]:
    """Each job's input owner, in one round trip (None: no record, so nobody's to show)."""
    values = redis.mget([_key(job_id) for job_id in job_ids]) if job_ids else []
    return {job_id: value.decode() if value else None for job_id, value in zip(job_ids, values)}


def store_uploads(root: Path, job_id: str, uploads) -> list[str]:
    """Save uploads under <root>/uploads/<jobId>/, each under a safe name of its own: a name already taken
    gets its index in front, then a counter, so no upload ever overwrites another."""
    folder = paths.make_folder(root, paths.upload_folder(root, job_id))
    stored = []
    for index, upload in enumerate(uploads):
        name = paths.safe_file_name(upload.filename, f"upload-{index}")
        taken = itertools.chain([f"{index}-{name}"], (f"{index}-{count}-{name}" for count in itertools.count(1)))
        path = paths.claim(folder, name, taken)
        upload.save(path)
        stored.append(paths.relative(root, path))
    return stored


def discard(root: Path, job_id: str) -> None:
    """Delete a job's inputs (a request refused after its uploads were saved leaves nothing behind)."""
    for folder in FOLDERS:
        _remove(root / folder / job_id)


def _remove(folder: Path) -> None:
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)


def sweep(redis: Redis, settings: Settings) -> int:
    """Delete the input folders older than INPUT_TTL whose job has ended or expired; a job still queued or
    running keeps its inputs (and their owner record). At most one worker sweeps per SWEEP_EVERY seconds.
    Returns how many folders went."""
    if not redis.set(SWEEP_LOCK, "1", nx=True, ex=SWEEP_EVERY):
        return 0
    root, removed, oldest = settings.images_root, 0, time.time() - settings.inputs_ttl
    for folder in FOLDERS:
        for entry in _old_folders(root / folder, oldest):
            pending = _pending_job(redis, entry.name)
            if pending is not None:
                record_owner(redis, entry.name, pending.meta.get("client", ""), settings)
                continue
            _remove(Path(entry.path))
            removed += 1
    if removed:
        log.info("deleted %d input folders older than %d s (INPUT_TTL)", removed, settings.inputs_ttl)
    return removed


def _old_folders(parent: Path, oldest: float) -> list[os.DirEntry]:
    try:
        with os.scandir(parent) as entries:
            return [
                entry
                for entry in entries
                if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < oldest
            ]
    except OSError:
        return []


def _pending_job(redis: Redis, job_id: str) -> Job | None:
    """The job, while it is still queued or running; None once it ended or expired."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except (NoSuchJobError, ValueError):
        return None
    return None if job.get_status(refresh=False) in jobs.TERMINAL else job

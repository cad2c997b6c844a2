"""A job's answer and the files it made.

GET /result?jobId=ID, /result/ID      status and result; wait=S holds until it ends (and seen=N, for a
                                      batch, until its progress moves past N)
DELETE /result?jobId=ID, /result/ID   cancel it
GET /result/file?jobId=ID             the file it made: a plot's PNG, a thumbnail, or a batch's
                                      thumbnails as one zip (index=N: entry N's thumbnail alone)
"""

import io
import mimetypes
import os
import time
import zipfile
from pathlib import Path, PurePosixPath

from flask import Blueprint, Response, g, jsonify, request, send_file, stream_with_context

from Image import MEDIA_TYPES
from imagejobs import answers, batch, callbacks, files, jobs, params, paths
from imagejobs.api.context import client, redis, settings

blueprint = Blueprint("results", __name__)


def user_job(job_id: str | None):
    """The client's job named in the path or by jobId (400 without one, 404 if it is not theirs)."""
    job_id = job_id or request.args.get("jobId", "")
    if not job_id:
        raise params.InvalidParameter("Give the jobId, as /result/<jobId> or /result?jobId=<jobId>.")
    job = jobs.fetch(redis(), job_id, settings().result_ttl, client().owns)
    g.job_id, g.action = job.id, job.meta.get("action")
    return job


@blueprint.get("/result")
@blueprint.get("/result/<job:job_id>")
@params.takes("jobId", models=(params.ResultQuery,))
def result(job_id: str | None = None):
    query = params.validate(params.ResultQuery, request.args.to_dict())
    job = user_job(job_id)
    read = answers.wait(redis(), job, query.wait, settings().result_ttl, query.seen) if query.wait else None
    status, body = answers.describe(redis(), job, read)
    return jsonify(body), status


@blueprint.delete("/result")
@blueprint.delete("/result/<job:job_id>")
@params.takes("jobId")
def cancel(job_id: str | None = None):
    """Cancel a job: a queued one never runs, a running batch starts no new image; what is done is kept.
    200 with its answer (status canceled); 409 if it had ended already."""
    job = user_job(job_id)
    jobs.cancel(redis(), job, settings().result_ttl)
    if job.meta.get("kind") == jobs.BATCH:
        batch.cancel(redis(), job.id, settings().result_ttl)
    with redis().pipeline() as pipe:  # a canceled job calls back too
        callbacks.schedule(pipe, job, settings())
        pipe.execute()
    status, body = answers.describe(redis(), job)
    return jsonify(body), status


@blueprint.get("/result/file")
@params.takes("jobId", models=(params.FileQuery,))
def result_file():
    """The file a finished job made: a chart kept in Redis, a thumbnail under the images root, or (for a
    batch) all its thumbnails in one zip, or entry `index`'s."""
    if not request.args.get("jobId"):
        raise params.InvalidParameter("Give the jobId, as /result/file?jobId=<jobId>.")
    query = params.validate(params.FileQuery, request.args.to_dict())
    job = user_job(None)
    stored = files.load(redis(), job.id)
    if stored is not None and query.index is None:
        data, mimetype = stored
        return send_file(
            io.BytesIO(data), mimetype=mimetype, as_attachment=True, download_name=f"{job.id}{extension(mimetype)}"
        )
    _, body = answers.describe(redis(), job)
    result = body.get("result") or {}
    if body["status"] == "canceled" and query.index is not None and isinstance(result.get("images"), list):
        raise paths.PathNotFound(
            f"Job {job.id} was canceled, so its entries are not numbered by image: download them all "
            "(without index), or one by its path: /images/file?path=<the entry's path>."
        )
    if query.index is None and isinstance(result.get("images"), list):
        return zipped(job.id, result["images"])
    made = made_file(result, query.index)
    if made is None:
        raise paths.PathNotFound(
            f"Job {job.id} has no file to download there: a finished plot or resize makes one "
            "(in a batch, give the index of an entry that succeeded)."
        )
    name = f"{job.id}{'' if query.index is None else f'-{query.index}'}{made.suffix}"
    return send_file(made, mimetype=MEDIA_TYPES.get(made.suffix.lower()), as_attachment=True, download_name=name)


def extension(mimetype: str) -> str:
    return mimetypes.guess_extension(mimetype) or ""


def made_file(result: dict, index: int | None) -> Path | None:
    """The thumbnail a resize result names (the job's own, or batch entry `index`'s), if it is still a file
    whose real path is inside the root."""
    if index is not None:
        entries = result.get("images") or []
        result = (entries[index].get("result") or {}) if index < len(entries) else {}
    named = result.get("path")
    if not isinstance(named, str):
        return None
    root = settings().images_root
    return paths.inside(root, root / named)  # relative to the root (an absolute one, of older jobs, stays so)


def zipped(job_id: str, entries: list[dict]):
    """The batch's thumbnails as one zip, streamed as it is written, each named by its path under resized/."""
    made = [(made_file({"images": entries}, index), entry) for index, entry in enumerate(entries)]
    made = [(path, zip_name(entry["result"]["path"])) for path, entry in made if path is not None]
    if not made:
        raise paths.PathNotFound(f"Job {job_id} made no files to download: only a finished resize batch does.")
    response = Response(stream_with_context(zip_stream(made)), mimetype="application/zip")
    response.headers["Content-Disposition"] = f'attachment; filename="{job_id}.zip"'
    return response


def zip_name(named: str) -> str:
    """A thumbnail's name in a batch's zip: its path under resized/ (Japan/a_resized.jpg)."""
    root = settings().images_root
    shown = PurePosixPath(paths.relative(root, root / named))
    name = str(shown.relative_to(paths.RESIZED_DIR) if shown.is_relative_to(paths.RESIZED_DIR) else shown)
    return name.replace("\\", "_")  # a zip's separator is "/": tools on Windows would split at a backslash


class _Chunks(io.RawIOBase):
    """A write-only stream whose bytes are taken out as they come: zipfile writes into it, the response
    sends what it took (zipfile writes a stream it cannot seek with data descriptors)."""

    def __init__(self):
        self.chunks = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        taken, self.chunks = b"".join(self.chunks), []
        return taken


def zip_stream(files_and_names):
    """Yield a zip of (path, name) files, one file at a time; stored, not deflated (thumbnails are compressed).

    Each file is looked at again as its turn comes: one deleted, or no longer a file inside the root, since
    the zip began is left out (the answer's 200 had gone, so a missing file must not cut the zip short);
    a name already in the zip (two images whose thumbnails share a name) is not added twice."""
    root = settings().images_root
    out = _Chunks()
    written = set()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for path, name in files_and_names:
            if name in written or (data := _read_inside(root, path)) is None:
                continue
            written.add(name)
            archive.writestr(zipfile.ZipInfo(name, time.localtime(time.time())[:6]), data)
            yield out.take()
    yield out.take()


def _read_inside(root: Path, path: Path) -> bytes | None:
    """The bytes of path if it is (still) a file whose real path is inside root, read without following a
    link at its end; None otherwise."""
    real = paths.inside(root, path)
    if real is None:
        return None
    try:
        with os.fdopen(os.open(real, os.O_RDONLY | os.O_NOFOLLOW), "rb") as file:
            return file.read()
    except OSError:
        return None

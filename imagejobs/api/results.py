"""A job's answer: GET /result?jobId=ID and /result/ID (wait=S holds until it ends), and
GET /result/file, the file it made (a thumbnail or a plot)."""

import io
import mimetypes
from pathlib import Path

from flask import Blueprint, g, jsonify, request, send_file

from imagejobs import answers, files, jobs, params, paths
from imagejobs.api.context import client, redis, settings

blueprint = Blueprint("results", __name__)


@blueprint.get("/result")
@blueprint.get("/result/<job_id>")
def result(job_id: str | None = None):
    job_id = job_id or request.args.get("jobId", "")
    if not job_id:
        raise params.InvalidParameter("Give the jobId, as /result/<jobId> or /result?jobId=<jobId>.")
    query = params.validate(params.ResultQuery, request.args.to_dict())
    job = jobs.fetch(redis(), job_id, settings().result_ttl, client().owns)
    g.job_id, g.action = job.id, job.meta.get("action")
    read = answers.wait(redis(), job, query.wait, settings().result_ttl) if query.wait else None
    status, body = answers.describe(redis(), job, read)
    return jsonify(body), status


@blueprint.get("/result/file")
def result_file():
    """The file a finished job made: a chart kept in Redis, or a thumbnail under the images root
    (in a batch, the thumbnail of entry `index`)."""
    job_id = request.args.get("jobId", "")
    if not job_id:
        raise params.InvalidParameter("Give the jobId, as /result/file?jobId=<jobId>.")
    query = params.validate(params.FileQuery, request.args.to_dict())
    status, body = answers.describe(redis(), jobs.fetch(redis(), job_id, settings().result_ttl, client().owns))
    stored = files.load(redis(), job_id)
    if stored is not None and query.index is None:
        data, mimetype = stored
        return send_file(
            io.BytesIO(data),
            mimetype=mimetype,
            as_attachment=True,
            download_name=f"{job_id}{mimetypes.guess_extension(mimetype) or ''}",
        )
    named = made_file(body.get("result") or {}, query.index)
    made = paths.inside(settings().images_root, named) if named is not None else None
    if made is None:  # none made, gone since, or (links resolved) not inside the root: nothing to serve
        raise paths.PathNotFound(
            f"Job {job_id} has no file to download there: a finished plot or resize makes one "
            "(in a batch, give the index of an entry that succeeded)."
        )
    name = f"{job_id}{'' if query.index is None else f'-{query.index}'}{made.suffix}"
    return send_file(
        made,
        mimetype=mimetypes.guess_type(made.name)[0] or "application/octet-stream",
        as_attachment=True,
        download_name=name,
    )


def made_file(result: dict, index: int | None) -> Path | None:
    """The thumbnail a resize result names: the job's own, or that of batch entry `index`."""
    if index is not None:
        entries = result.get("images") or []
        result = (entries[index].get("result") or {}) if index < len(entries) else {}
    return Path(result["path"]) if isinstance(result.get("path"), str) else None

"""The Flask app: parse and validate requests, enqueue jobs, answer. No image code lives here.

Routes:
  GET  /imageapi?imagePath=P         size of an image or of a folder's images
  POST /imageapi?action=A            resize (default), size, classify or plot of a path, URLs or uploads (field `image`)
  GET  /result?jobId=ID, /result/ID  a job's status and result; wait=S holds until it ends
  GET  /result/file?jobId=ID         the file a job made (a thumbnail, a plot)
  GET  /images?path=P                the folders and images in a folder of the root (for the page)
  GET  /, /static/...                 the web page
  GET  /health, /metrics             for operators
  GET  /openapi.json                 the OpenAPI document
"""
import hmac
import io
import logging
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, jsonify, request, send_file
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Worker
from werkzeug.exceptions import HTTPException, UnsupportedMediaType

import downloads
import files
import jobs
import metrics
import openapi
import params
import paths
from RedisConfig import CLASSIFY_QUEUE, IMAGES_QUEUE, QUEUE_NAMES, RedisNotConfigured, connection, queue, redis_url
from config import settings

log = logging.getLogger("api")
QUEUE_FULL_RETRY_AFTER = 10  # seconds; a full queue drains at hundreds of jobs per second
PUBLIC_ROUTES = {"/health", "/"}  # and /static/: the page's assets carry no data; the page asks for a token
REPEATABLE = {"imageUrl"}


@dataclass(frozen=True)
class Action:
    """An action a request may name: how its parameters are validated and which workers run it."""

    name: str
    params: type[params._Params]
    queue: str
    summary: str
    per_image: bool = True  # one entry per image (batches fan out); else one job over all the images


ACTIONS = {
    action.name: action
    for action in (
        Action("size", params.SizeParams, IMAGES_QUEUE, "Size"),
        Action("resize", params.ResizeParams, IMAGES_QUEUE, "Thumbnail"),
        Action("classify", params.ClassifyParams, CLASSIFY_QUEUE, "Classification"),
        Action("plot", params.PlotParams, IMAGES_QUEUE, "Plot", per_image=False),
    )
}

redis_url()  # refuse to start on a missing REDIS_URL, or one without a password when REQUIRE_REDIS_AUTH is set
settings.url_networks  # and on a malformed ALLOWED_URL_NETWORKS
app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 1024 * 1024
app.json.sort_keys = False


# --- requests --------------------------------------------------------------------------------------

def request_values() -> dict:
    """Parameters from the query string, form fields and a JSON object body, merged (the body wins).

    Each place is checked on its own: a malformed parameter is a 400 even where another place or the
    chosen action would make it moot. A parameter may appear once, except imageUrl, which may repeat.
    """
    merged = {}
    for source in (request.args, request.form):
        values = {}
        for name, given in source.lists():
            if len(given) > 1 and name not in REPEATABLE:
                raise params.InvalidParameter(f"Invalid parameter {name}: give it once, not {len(given)} times.")
            values[name] = given if name in REPEATABLE and len(given) > 1 else given[0]
        merged.update(checked(values))
    if request.mimetype == "application/json" and request.content_length:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise params.InvalidParameter("The JSON body must be an object, like {\"imagePath\": \"Japan/a.jpg\"}.")
        merged.update(checked({name: value for name, value in body.items() if value is not None}, strict=True))  # null: not given
    elif request.content_length and request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise UnsupportedMediaType("Send parameters as a query string, form fields, multipart/form-data or a JSON object.")
    return merged


def checked(values: dict, strict: bool = False) -> dict:
    """values, once every parameter of any action in them is well-formed (else InvalidParameter)."""
    if "action" in values:
        choose_action(values, "")
    params.validate(params.AnyActionParams, values, strict)
    return values


def choose_action(values: dict, default: str) -> Action:
    given = values.get("action", default)
    name = given.strip().lower() or default if isinstance(given, str) else repr(given)
    if name not in ACTIONS:
        raise params.InvalidParameter(f"Invalid parameter action: {name!r} is not one of {', '.join(ACTIONS)}.")
    return ACTIONS[name]


def named_images(values: dict, job_id: str) -> tuple[list[str], bool, str]:
    """(images: paths relative to the root, or URLs; whether they make a batch; what the user named)."""
    source = params.validate(params.Source, values)
    uploads = [f for f in request.files.getlist("image") if f.filename or f.content_length]
    if not uploads and request.files:
        raise params.InvalidParameter(f"Upload files in the form field 'image' (got {', '.join(map(repr, request.files))}).")
    given = [name for name, present in (("imagePath", source.imagePath), ("image uploads", uploads), ("imageUrl", source.imageUrl)) if present]
    if len(given) > 1:
        raise params.InvalidParameter(f"Name the images one way: {' and '.join(given)} were both given.")
    if uploads:
        if len(uploads) > settings.max_upload_files:
            raise params.InvalidParameter(f"{len(uploads)} files were uploaded; the limit is {settings.max_upload_files} (MAX_UPLOAD_FILES).")
        return store_uploads(uploads, job_id), len(uploads) > 1, "uploaded file" + "s" * (len(uploads) > 1)
    if source.imageUrl:
        return checked_urls(source.imageUrl), len(source.imageUrl) > 1, "image URL" + "s" * (len(source.imageUrl) > 1)
    if not source.imagePath:
        raise params.InvalidParameter(
            "Name an image: give imagePath (a file or folder under the images root), imageUrl, or upload files in the field 'image'.")
    return path_images(source)


def path_images(source: params.Source) -> tuple[list[str], bool, str]:
    """The image imagePath names, or the images of the folder it names (a batch)."""
    root = settings.images_root
    target = paths.resolve(root, source.imagePath)
    named = paths.relative(root, target)
    if target.is_file():
        return [named], False, named
    images = paths.list_images(root, target, source.recursive)
    if len(images) > settings.max_folder_images:
        raise params.InvalidParameter(
            f"The folder {named!r} holds {len(images)} images; the limit is {settings.max_folder_images} (MAX_FOLDER_IMAGES): name a subfolder.")
    if not images:
        raise params.InvalidParameter(
            f"The folder {named!r} holds no images"
            f"{'' if source.recursive else ' directly (add recursive=true to include its subfolders)'}.")
    return images, True, named


def checked_urls(urls: list[str]) -> list[str]:
    """The URLs, each well-formed http(s); where they lead is checked by the worker that downloads them."""
    if len(urls) > settings.max_urls:
        raise params.InvalidParameter(f"{len(urls)} image URLs were given; the limit is {settings.max_urls} (MAX_URLS).")
    try:
        return [downloads.validate_url(url) for url in urls]
    except downloads.DownloadError as exc:
        raise params.InvalidParameter(f"Invalid parameter imageUrl: {exc}") from None


def store_uploads(uploads, job_id: str) -> list[str]:
    """Save uploads under <root>/uploads/<jobId>/, each under a safe, distinct name."""
    folder = paths.upload_folder(settings.images_root, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    stored = []
    for index, upload in enumerate(uploads):
        name = paths.safe_file_name(upload.filename, f"upload-{index}")
        if (folder / name).exists():
            name = f"{index}-{name}"
        upload.save(folder / name)
        stored.append(paths.relative(settings.images_root, folder / name))
    return stored


def enqueue(default_action: str):
    """Queue the job a request asks for: 202 with its jobId; or, with wait=S, the job's answer
    (200, as GET /result gives) if it ends within S seconds - one request from submit to result."""
    values = request_values()
    action = choose_action(values, default_action)
    options = params.validate(action.params, values)
    wait = params.validate(params.ResultQuery, values).wait
    job_id = jobs.new_job_id()
    images, is_batch, named = named_images(values, job_id)
    options.check_image_count(len(images))
    options = options.model_dump(exclude_none=True)
    redis = connection()
    job = start_job(redis, action, images, is_batch, options, job_id, named)
    g.job_id, g.action = job_id, action.name
    metrics.ENQUEUED.labels(action.name, "batch" if is_batch else "single").inc()
    metrics.IMAGES.labels(action.name).inc(len(images))
    location = f"/result/{job_id}"
    counted = f" ({len(images)} images)" if len(images) > 1 else ""
    body = {"jobId": job_id, "status": "queued", "action": action.name,
            "Result": f"{action.summary} of {named}{counted} queued; fetch the result at {location}."}
    if wait:
        status, answer = jobs.describe(redis, job, jobs.wait(redis, job, wait))
        if status == 200:
            return jsonify(answer), 200, {"Location": location}
        body["status"] = answer["status"]
    return jsonify(body), 202, {"Location": location}


def start_job(redis, action: Action, images: list[str], is_batch: bool, options: dict, job_id: str, named: str):
    """The job over the images: one job over all of them (a plot), a batch, or one image's job."""
    if not action.per_image:
        return jobs.enqueue_whole(redis, action.queue, action.name, images, options, job_id, named)
    if is_batch:
        return jobs.enqueue_batch(redis, action.queue, action.name, images, options, job_id)
    return jobs.enqueue_single(redis, action.queue, action.name, images[0], options, job_id)


# --- routes ----------------------------------------------------------------------------------------

@app.get("/imageapi")
def image_size():
    if str(request.args.get("action", "size")).lower() != "size":
        raise params.InvalidParameter("GET /imageapi reads sizes only; use POST for other actions.")
    return enqueue("size")


@app.post("/imageapi")
def image_action():
    return enqueue("resize")


@app.get("/result")
@app.get("/result/<job_id>")
def result(job_id: str | None = None):
    job_id = job_id or request.args.get("jobId", "")
    if not job_id:
        raise params.InvalidParameter("Give the jobId, as /result/<jobId> or /result?jobId=<jobId>.")
    query = params.validate(params.ResultQuery, request.args.to_dict())
    redis = connection()
    job = jobs.fetch(redis, job_id)
    g.job_id, g.action = job.id, job.meta.get("action")
    read = jobs.wait(redis, job, query.wait) if query.wait else None
    status, body = jobs.describe(redis, job, read)
    return jsonify(body), status


@app.get("/result/file")
def result_file():
    """The file a finished job made: a chart kept in Redis, or a thumbnail under the images root
    (in a batch, the thumbnail of entry `index`)."""
    job_id = request.args.get("jobId", "")
    if not job_id:
        raise params.InvalidParameter("Give the jobId, as /result/file?jobId=<jobId>.")
    query = params.validate(params.FileQuery, request.args.to_dict())
    redis = connection()
    status, body = jobs.describe(redis, jobs.fetch(redis, job_id))
    stored = files.load(redis, job_id)
    if stored is not None and query.index is None:
        data, mimetype = stored
        return send_file(io.BytesIO(data), mimetype=mimetype, as_attachment=True,
                         download_name=f"{job_id}{mimetypes.guess_extension(mimetype) or ''}")
    made = made_file(body.get("result") or {}, query.index)
    if made is None or not made.is_relative_to(settings.images_root) or not made.is_file():
        raise paths.PathNotFound(f"Job {job_id} has no file to download there: a finished plot or resize makes one "
                                 "(in a batch, give the index of an entry that succeeded).")
    name = f"{job_id}{'' if query.index is None else f'-{query.index}'}{made.suffix}"
    return send_file(made, mimetype=mimetypes.guess_type(made.name)[0] or "application/octet-stream",
                     as_attachment=True, download_name=name)


def made_file(result: dict, index: int | None) -> Path | None:
    """The thumbnail a resize result names: the job's own, or that of batch entry `index`."""
    if index is not None:
        entries = result.get("images") or []
        result = (entries[index].get("result") or {}) if index < len(entries) else {}
    return Path(result["path"]) if isinstance(result.get("path"), str) else None


@app.get("/health")
def health():
    redis = connection()
    try:
        redis.ping()
        body = {"redis": "ok", "workers": Worker.count(connection=redis),
                "queues": {name: queue(name, redis).count for name in QUEUE_NAMES}}
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning("health: Redis unreachable: %s", exc)
        return jsonify({"redis": "unreachable", "error": "Redis is unreachable; jobs cannot be queued or read."}), 503
    return jsonify(body)


@app.get("/metrics")
def prometheus_metrics():
    return metrics.exposition(), 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}


@app.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document())


@app.get("/images")
def browse_images():
    """The folders and images directly inside a folder of the images root (read-only), for the web page."""
    root = settings.images_root
    folder = paths.resolve(root, params.validate(params.BrowseQuery, request.args.to_dict()).path, name="path")
    if not folder.is_dir():
        raise params.InvalidParameter(f"path {paths.relative(root, folder)!r} is a file, not a folder.")
    folders, images = paths.browse(root, folder)
    return jsonify({"path": paths.relative(root, folder), "folders": folders, "images": images})


@app.get("/")
def index():
    """The web page: static HTML, CSS and JavaScript from static/, no build step, nothing from elsewhere."""
    return app.send_static_file("index.html")


# --- answers to errors: always JSON, never a traceback -------------------------------------------------

def error(status: int, message: str):
    return jsonify({"error": message}), status


@app.errorhandler(params.InvalidParameter)
@app.errorhandler(paths.PathRefused)
def bad_request(exc):
    return error(400, str(exc))


@app.errorhandler(paths.PathNotFound)
@app.errorhandler(jobs.JobNotFound)
def not_found(exc):
    return error(404, str(exc))


@app.errorhandler(jobs.QueueFull)
def queue_full(exc):
    return jsonify({"error": str(exc)}), 429, {"Retry-After": str(QUEUE_FULL_RETRY_AFTER)}


@app.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    messages = {
        404: f"No route {request.path}; see / for the routes.",
        405: f"{request.method} is not allowed on {request.path}.",
        413: f"The request is larger than the limit of {settings.max_upload_mb} MB (MAX_UPLOAD_MB).",
    }
    answer = error(exc.code or 500, messages.get(exc.code, exc.description))
    if exc.code == 405:
        return (*answer, {"Allow": ", ".join(sorted(exc.valid_methods or ()))})
    return answer


@app.errorhandler(RedisConnectionError)
@app.errorhandler(RedisTimeoutError)
@app.errorhandler(RedisNotConfigured)
def redis_down(exc):
    log.warning("Redis unavailable: %s", exc)
    return error(503, "Redis is unreachable, so jobs cannot be queued or read; try again shortly.")


@app.errorhandler(Exception)
def internal_error(exc):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error(500, "Internal error; the API log has the details.")


# --- every request: timing, metrics and one log line ---------------------------------------------------

@app.before_request
def start_timer():
    g.started = time.perf_counter()


@app.before_request
def require_token():
    """With API_TOKENS set, every route but the public ones needs `Authorization: Bearer <token>`.

    Every token is compared, in constant time, so the answer's timing tells nothing about them.
    """
    if not settings.tokens or request.path in PUBLIC_ROUTES or request.path.startswith("/static/"):
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    matches = [hmac.compare_digest(given.strip().encode(), token.encode()) for token in settings.tokens]
    if scheme.lower() == "bearer" and any(matches):
        return None
    return jsonify({"error": "This service needs a token: send the header Authorization: Bearer <token>."}), 401, {
        "WWW-Authenticate": 'Bearer realm="imageapi"'}


@app.after_request
def account(response):
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "unmatched"
    metrics.REQUESTS.labels(request.method, route, response.status_code).inc()
    metrics.LATENCY.labels(route).observe(elapsed)
    log.info("%s %s %d %.1f ms", request.method, request.full_path.rstrip("?"), response.status_code, 1000 * elapsed,
             extra={"job_id": g.get("job_id", "-"), "action": g.get("action", "-")})
    return response

"""Submitting work: GET /imageapi reads sizes; POST /imageapi runs any action (resize by default) on a
path, uploads or URLs, as one job or a batch."""

from flask import Blueprint, g, jsonify, request

from imagejobs import answers, batch, inputs, jobs, metrics, params, tasks
from imagejobs.actions import DEFAULT_ACTION, READ_ACTION, Action
from imagejobs.api import requests
from imagejobs.api.context import client, redis, settings

blueprint = Blueprint("submit", __name__)


@blueprint.get("/imageapi")
@params.takes(*requests.SUBMIT_PARAMETERS)
def image_size():
    if str(request.args.get("action", READ_ACTION)).lower() != READ_ACTION:
        raise params.InvalidParameter("GET /imageapi reads sizes only; use POST for other actions.")
    return enqueue(READ_ACTION)


@blueprint.post("/imageapi")
@params.takes(*requests.SUBMIT_PARAMETERS)
def image_action():
    return enqueue(DEFAULT_ACTION)


def enqueue(default_action: str):
    """Queue the job a request asks for: 202 with its jobId; or, with wait=S, the job's answer
    (200, as GET /result gives) if it ends within S seconds - one request from submit to result."""
    given = requests.values()
    action = requests.choose_action(given, default_action)
    requests.reject_unused(given, action, f"{request.method} /imageapi")
    options = params.validate(action.params, given)
    options.check_needs()
    wait = params.validate(params.WaitQuery, given).wait
    source = params.validate(params.Source, given)
    callback_url = requests.checked_callback(source.callbackUrl)
    job_id = jobs.new_job_id()
    try:
        images, is_batch, named = requests.named_images(given, job_id)
        options.check_image_count(len(images))
        options = options.model_dump(exclude_none=True) | ({"force": True} if source.force else {})
        submission = jobs.Submission(redis(), settings(), client().name, callback_url)
        job = start_job(submission, action, images, is_batch, options, job_id, named)
    except BaseException:  # refused (a bad parameter, a full queue, Redis down...): it leaves nothing on disk
        inputs.discard(settings().images_root, job_id)
        raise
    g.job_id, g.action = job_id, action.name
    metrics.ENQUEUED.labels(action.name, "batch" if is_batch else "single").inc()
    metrics.IMAGES.labels(action.name).inc(len(images))
    location = f"/result/{job_id}"
    counted = f" ({len(images)} images)" if len(images) > 1 else ""
    body = {
        "jobId": job_id,
        "status": "queued",
        "action": action.name,
        "Result": f"{action.summary} of {named}{counted} queued; fetch the result at {location}.",
    }
    if wait:
        status, answer = answers.describe(redis(), job, answers.wait(redis(), job, wait, settings().result_ttl))
        if status == 200:
            return jsonify(answer), 200, {"Location": location}
        body["status"] = answer["status"]
    return jsonify(body), 202, {"Location": location}


def start_job(
    submission: jobs.Submission,
    action: Action,
    images: list[str],
    is_batch: bool,
    options: dict,
    job_id: str,
    named: str,
):
    """The job over the images: one job over all of them (a plot), a batch, or one image's job."""
    if not action.per_image:
        return tasks.enqueue_whole(submission, action, images, options, job_id, named)
    if is_batch:
        return batch.enqueue(submission, action, images, options, job_id)
    return tasks.enqueue_single(submission, action, images[0], options, job_id)

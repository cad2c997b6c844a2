"""The OpenAPI 3.1 document of the API, served at /openapi.json (Postman and schemathesis read it).

Request parameters come from the pydantic models in params.py and the actions table, the same ones
that validate requests, so the document cannot drift from the validation. The answers' shapes are
declared here.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

from Image import MEDIA_TYPES, OUTPUT_EXTENSIONS
from imagejobs import params
from imagejobs.actions import ACTIONS, DEFAULT_ACTION, AnyActionParams
from imagejobs.api import hooks


class Error(BaseModel):
    error: str = Field(description="one sentence saying what went wrong and what to do")


class Enqueued(BaseModel):
    jobId: str
    status: Literal["queued", "started"] = Field(description="started only when wait=S ran out while the job ran")
    action: str
    Result: str = Field(description="one human sentence")


class Progress(BaseModel):
    done: int = Field(description="images that succeeded")
    failed: int = Field(description="images that failed")
    total: int


class Callback(BaseModel):
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    lastStatus: int | None = Field(None, description="the receiver's last HTTP status")
    lastError: str | None = None
    deliveredAt: str | None = None


class CallbackSecret(BaseModel):
    client: str
    secret: str
    header: str
    signature: str = Field(description="how the header is made")


class JobAnswer(BaseModel):
    jobId: str
    action: str | None
    status: Literal["queued", "started", "finished", "failed", "canceled"]
    enqueuedAt: str | None
    startedAt: str | None
    endedAt: str | None = Field(description="when it ended: finished, failed, or was canceled")
    result: dict[str, Any] | None = Field(
        None, description="once finished: the action's result; a canceled batch's: its progress and the images made"
    )
    error: str | None = Field(None, description="once failed: one sentence a user can act on")
    progress: Progress | None = Field(None, description="while a batch runs, and once it was canceled")
    entries: list[dict[str, Any]] | None = Field(
        None,
        deprecated=True,
        description="a canceled batch: the entries made before the cancel (result.images has them, as a finished "
        "batch's; this copy goes in a later release)",
    )
    callback: Callback | None = Field(None, description="with callbackUrl: its delivery's outcome so far")
    reused: bool | None = Field(
        None, description="a single image's result reused from an earlier job (a batch says so in each entry)"
    )


class Listing(BaseModel):
    path: str = Field(description="the folder, relative to the images root ('.' for the root)")
    folders: list[str]
    outputs: list[str] = Field(
        description="those of the folders the service writes (resized, uploads, downloads): in the root only"
    )
    images: list[str]


class Health(BaseModel):
    redis: Literal["ok"]
    workers: int
    queues: dict[str, int]


class HealthDown(BaseModel):
    redis: Literal["unreachable"]
    error: str


class ActionParameter(BaseModel):
    name: str
    title: str
    description: str
    type: str | None = Field(description="integer, boolean, choice or string")
    required: bool
    optional: bool = Field(description="may be left unset (then a choice shows unsetLabel)")
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: list[str] | None = None
    labels: dict[str, str] | None = Field(None, description="how the page shows each choice")
    unsetLabel: str | None = None
    unit: str | None = None
    unitName: str | None = None
    needs: dict[str, str] | None = Field(None, description="the other parameters' values it needs to mean anything")
    example: str | None = None
    maxLength: int | None = None


class ActionDescription(BaseModel):
    name: str
    summary: str
    title: str = Field(
        description="the page's title of such a job: {name} is a parameter's value, {, name|upper} "
        "adds ', ' and the upper-cased value when it was given"
    )
    description: str
    perImage: bool = Field(description="one entry per image in a batch; else one result over all the images")
    parameters: list[ActionParameter]


class Limits(BaseModel):
    maxUrls: int
    maxUploadFiles: int
    maxUploadMb: int
    maxFolderImages: int
    imageExtensions: list[str]


class ActionsList(BaseModel):
    default: str = Field(description="the action of a POST that names none")
    actions: list[ActionDescription]
    limits: Limits


MODELS = (
    Callback,
    CallbackSecret,
    ActionParameter,
    ActionDescription,
    Limits,
    ActionsList,
    Error,
    Enqueued,
    Progress,
    JobAnswer,
    Listing,
    Health,
    HealthDown,
)
ERRORS = {
    400: "a parameter or path is invalid",
    401: "a token is needed (API_TOKENS is set)",
    404: "no such file, job or route",
    405: "method not allowed",
    409: "the job has already ended: there is nothing to cancel",
    413: "the upload is too large",
    415: "unsupported request body",
    429: "the queue is full; retry after Retry-After seconds",
    503: "Redis is unreachable",
}


def _schema(model: type[BaseModel]) -> dict:
    """The model's JSON Schema, its nested models referred to among the components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict:
    """The JSON errors an operation answers, plus those every operation may: 401, 414 (from gunicorn), 503."""
    answers = {str(code): _json(Error, ERRORS[code]) for code in (*codes, 401, 503)}
    answers["414"] = _json(Error, "the request line is longer than 8190 bytes (gunicorn answers, in JSON)")
    return answers


def _properties(*models: type[params.Params]) -> dict:
    """The parameters of several models as one set of JSON Schema properties."""
    merged = {}
    for model in models:
        merged.update(model.model_json_schema()["properties"])
    return merged


def _query(properties: dict, required=()) -> list[dict]:
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": schema,
            "description": schema.get("description", ""),
        }
        for name, schema in properties.items()
    ]


ACTION = {"type": "string", "enum": list(ACTIONS), "description": f"what to do (POST default: {DEFAULT_ACTION})"}
JOB_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "the jobId an enqueue answered"}
JOB_ID_QUERY = {"name": "jobId", "in": "query", "required": True, "schema": JOB_ID}
JOB_ID_PATH = {"name": "jobId", "in": "path", "required": True, "schema": JOB_ID}


def _enqueue_answers() -> dict:
    links = {
        "GetResult": {"operationId": "getResultById", "parameters": {"jobId": "$response.body#/jobId"}},
        "GetResultFile": {"operationId": "getResultFile", "parameters": {"jobId": "$response.body#/jobId"}},
    }
    accepted = _json(Enqueued, "queued; the Location header points at the result")
    accepted["headers"] = {"Location": {"schema": {"type": "string"}, "description": "/result/<jobId>"}}
    accepted["links"] = links
    ended = _json(JobAnswer, "with wait=S: the job ended within S seconds (the same answer as GET /result)")
    ended["headers"] = accepted["headers"]
    return {"200": ended, "202": accepted}


def _result_answers() -> dict:
    return {
        "200": _json(JobAnswer, "the job ended: finished with a result, failed with an error, or canceled"),
        "202": _json(JobAnswer, "the job is queued or running (a batch shows its progress)"),
        **_errors(400, 404),
    }


def _cancel(operation_id: str, job_id: dict) -> dict:
    return {
        "operationId": operation_id,
        "summary": "Cancel a job: a queued job never runs, a running batch starts no new image; what is done is kept",
        "parameters": [job_id],
        "responses": {
            "200": _json(JobAnswer, "canceled: its answer (a batch's progress, and its entries in result.images)"),
            **_errors(400, 404, 409),
        },
    }


def _binary(description: str, media_types) -> dict:
    return {"description": description, "content": {media: {"schema": {"type": "string"}} for media in media_types}}


IMAGE_TYPES = tuple(dict.fromkeys(MEDIA_TYPES.values()))  # each format the service reads
THUMBNAIL_TYPES = tuple(MEDIA_TYPES[extension] for extension in OUTPUT_EXTENSIONS.values())  # and writes


# Each path's group in /docs, by resource (Swagger UI put every route under one "default" heading).
TAGS = {
    "Jobs": ("submit work: sizes, thumbnails, classifications, plots", ("/imageapi",)),
    "Results": ("a job's answer, its files, and cancelling it", ("/result",)),
    "Images": ("the folders and files under the images root", ("/images",)),
    "Callbacks": ("signing the answers POSTed to callbackUrl", ("/callbacks",)),
    "Service": ("health, metrics, actions, this document and the page", ("/",)),
}


def _tag(path: str) -> str:
    return next(tag for tag, (_, prefixes) in TAGS.items() if path.startswith(prefixes))


def document(server: str = "/", tokens: bool = False) -> dict:
    """The whole document, built from the models; `server` is where the service answers (its servers).
    With tokens (API_TOKENS set), every operation but the open ones needs a bearer token, and says so; without,
    none does, and the document shows no lock."""
    built = _document(server)
    for path, item in built["paths"].items():
        for operation in item.values():
            operation["tags"] = [_tag(path)]
    built["tags"] = [{"name": tag, "description": text} for tag, (text, _) in TAGS.items()]
    if tokens:
        built["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "a token of API_TOKENS"}
        }
        built["security"] = [{"bearer": []}]
        for path, item in built["paths"].items():
            if hooks.is_public(path):
                for operation in item.values():
                    operation["security"] = [{}]
    return built


def _document(server: str) -> dict:
    fields = {"action": ACTION, **_properties(AnyActionParams)}
    # In a JSON body, null means "not given" (the query's value or the default applies).
    body = {
        "type": "object",
        "properties": {name: {"anyOf": [schema, {"type": "null"}]} for name, schema in fields.items()},
    }
    form = {"type": "object", "properties": fields}
    upload = {
        "type": "object",
        "properties": {
            "image": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "one or more files",
            },
            "action": ACTION,
            **_properties(AnyActionParams),
        },
    }
    wait = _query(params.ResultQuery.model_json_schema()["properties"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Image job service",
            "version": "1",
            "description": (
                "Sizes, thumbnails, ImageNet classifications and plots of images, "
                "as RQ jobs fetched by jobId until they expire."
            ),
        },
        "paths": {
            "/imageapi": {
                "get": {
                    "operationId": "size",
                    "summary": "Queue the size of an image, or of a folder's images",
                    "parameters": _query(params.Source.model_json_schema()["properties"], required=("imagePath",)),
                    "responses": {**_enqueue_answers(), **_errors(400, 404, 429)},
                },
                "post": {
                    "operationId": "enqueue",
                    "summary": "Queue an action on a path, on uploads, or on a folder",
                    "parameters": _query(fields),
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {"schema": body},
                            "application/x-www-form-urlencoded": {"schema": form},
                            "multipart/form-data": {"schema": upload},
                        },
                    },
                    "responses": {**_enqueue_answers(), **_errors(400, 404, 413, 415, 429)},
                },
            },
            "/result": {
                "get": {
                    "operationId": "getResult",
                    "summary": "A job's status and result",
                    "parameters": [JOB_ID_QUERY, *wait],
                    "responses": _result_answers(),
                },
                "delete": _cancel("cancel", JOB_ID_QUERY),
            },
            "/result/{jobId}": {
                "get": {
                    "operationId": "getResultById",
                    "summary": "A job's status and result",
                    "parameters": [JOB_ID_PATH, *wait],
                    "responses": _result_answers(),
                },
                "delete": _cancel("cancelById", JOB_ID_PATH),
            },
            "/result/file": {
                "get": {
                    "operationId": "getResultFile",
                    "summary": "The file a finished job made (thumbnail or plot), as an attachment; for a batch of "
                    "thumbnails, a zip of them named by their paths under resized/ (index=N: entry N's alone); "
                    "for a canceled batch, a zip of those it made",
                    "parameters": [
                        {"name": "jobId", "in": "query", "required": True, "schema": JOB_ID},
                        *_query(params.FileQuery.model_json_schema()["properties"]),
                    ],
                    "responses": {
                        "200": {
                            "description": "the file",
                            "content": {
                                media: {"schema": {"type": "string", "format": "binary"}}
                                for media in (*THUMBNAIL_TYPES, "application/zip")
                            },
                        },
                        **_errors(400, 404),
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "The web page to submit images and watch jobs",
                    "responses": {
                        "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                        **_errors(),
                    },
                }
            },
            "/static/{filename}": {
                "get": {
                    "operationId": "pageAsset",
                    "summary": "The page's scripts, styles and icons",
                    "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "the file",
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **_errors(404),
                    },
                }
            },
            "/images": {
                "get": {
                    "operationId": "browse",
                    "summary": "The folders and images directly inside a folder of the images root",
                    "parameters": _query(params.BrowseQuery.model_json_schema()["properties"]),
                    "responses": {"200": _json(Listing, "the folder's contents"), **_errors(400, 404)},
                }
            },
            "/images/file": {
                "get": {
                    "operationId": "imageFile",
                    "summary": "One image under the images root (a thumbnail under resized/, say)",
                    "parameters": _query(params.BrowseQuery.model_json_schema()["properties"], required=("path",)),
                    "responses": {"200": _binary("the image", IMAGE_TYPES), **_errors(400, 404)},
                }
            },
            "/callbacks/secret": {
                "get": {
                    "operationId": "callbackSecret",
                    "summary": "The secret this client's callbacks are signed with (X-Imagejobs-Signature)",
                    "responses": {"200": _json(CallbackSecret, "the secret and how it signs"), **_errors()},
                }
            },
            "/docs": {
                "get": {
                    "operationId": "docs",
                    "summary": "This document in Swagger UI, every file of it served by the service",
                    "responses": {"200": _binary("HTML", ("text/html",)), **_errors()},
                }
            },
            "/docs/{name}": {
                "get": {
                    "operationId": "docsFile",
                    "summary": "Swagger UI's scripts and styles",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _binary("the file", ("*/*",)), **_errors(404)},
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Redis, workers and queue depths",
                    "responses": {"200": _json(Health, "Redis answers"), "503": _json(HealthDown, "Redis is down")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(),
                    },
                }
            },
            "/actions": {
                "get": {
                    "operationId": "actions",
                    "summary": (
                        "The actions, their parameters and the server's limits (the page builds its form from them)"
                    ),
                    "responses": {
                        "200": _json(ActionsList, "every action, in the order the page shows them"),
                        **_errors(),
                    },
                }
            },
        },
        "components": {
            "schemas": {model.__name__: _schema(model) for model in MODELS},
        },
        "servers": [{"url": server, "description": "this service"}],
    }

"""What describes the service: GET /openapi.json, GET /docs (Swagger UI over it, every file of it served
from the flask-swagger-ui package by the service itself), GET /actions (the actions, their parameters
and the server's limits, which the page builds its form from), and the page itself (GET /, /static/...)."""

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, abort, current_app, jsonify, request, send_from_directory

from Image import IMAGE_EXTENSIONS
from imagejobs import params
from imagejobs.actions import ACTIONS, DEFAULT_ACTION
from imagejobs.api import openapi
from imagejobs.api.context import settings

blueprint = Blueprint("docs", __name__)


SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"
SWAGGER_FILES = {"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"}


@blueprint.get("/openapi.json")
@params.takes()
def openapi_document():
    return jsonify(openapi.document(request.script_root or "/", tokens=bool(settings().clients)))


@blueprint.get("/docs")
def docs():
    """Swagger UI over /openapi.json: every request it makes carries the page's token (as the page's own do)."""
    return current_app.send_static_file("docs.html")


@blueprint.get("/docs/<name>")
def docs_file(name: str):
    if name not in SWAGGER_FILES:
        abort(404)
    return send_from_directory(SWAGGER_UI, name, max_age=3600)


@blueprint.get("/actions")
@params.takes()
def actions():
    limits = settings()
    return jsonify(
        {
            "default": DEFAULT_ACTION,
            "actions": [
                {
                    "name": action.name,
                    "summary": action.summary,
                    "title": action.title,
                    "description": action.description,
                    "perImage": action.per_image,
                    "parameters": params.fields(action.params),
                }
                for action in ACTIONS.values()
            ],
            "limits": {
                "maxUrls": limits.max_urls,
                "maxUploadFiles": limits.max_upload_files,
                "maxUploadMb": limits.max_upload_mb,
                "maxFolderImages": limits.max_folder_images,
                "imageExtensions": sorted(IMAGE_EXTENSIONS),
            },
        }
    )


@blueprint.get("/")
def index():
    """The web page: static HTML, CSS and JavaScript from static/, no build step, nothing from elsewhere."""
    return current_app.send_static_file("index.html")

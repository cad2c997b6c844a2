"""What describes the service: GET /openapi.json, GET /actions (the actions, their parameters and the
server's limits, which the page builds its form from), and the page itself (GET /, /static/...)."""

from flask import Blueprint, current_app, jsonify

from Image import IMAGE_EXTENSIONS
from imagejobs import params
from imagejobs.actions import ACTIONS, DEFAULT_ACTION
from imagejobs.api import openapi
from imagejobs.api.context import settings

blueprint = Blueprint("docs", __name__)


@blueprint.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document())


@blueprint.get("/actions")
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

"""GET /images?path=P: the folders and images directly inside a folder of the images root (read-only),
for the page's folder browser."""

from flask import Blueprint, jsonify, request

from imagejobs import params, paths
from imagejobs.api import requests
from imagejobs.api.context import client, settings

blueprint = Blueprint("browse", __name__)


@blueprint.get("/images")
def browse_images():
    root = settings().images_root
    folder = requests.resolve(params.validate(params.BrowseQuery, request.args.to_dict()).path, "path")
    if not folder.is_dir():
        raise params.InvalidParameter(f"path {paths.relative(root, folder)!r} is a file, not a folder.")
    folders, images = paths.browse(root, folder, client().sees)
    return jsonify({"path": paths.relative(root, folder), "folders": folders, "images": images})

"""The images root, read-only: GET /images?path=P lists the folders and images directly inside a folder
(the page's folder browser); GET /images/file?path=P serves one image (a thumbnail under resized/, or
any image), so every thumbnail can be fetched over HTTP after its job's result has expired."""

from flask import Blueprint, jsonify, request, send_file

from Image import MEDIA_TYPES
from imagejobs import params, paths
from imagejobs.api import requests
from imagejobs.api.context import client, settings

blueprint = Blueprint("browse", __name__)


@blueprint.get("/images")
@params.takes(models=(params.BrowseQuery,))
def browse_images():
    root = settings().images_root
    folder = requests.resolve(params.validate(params.BrowseQuery, request.args.to_dict()).path, "path")
    if not folder.is_dir():
        raise params.InvalidParameter(f"path {paths.relative(root, folder)!r} is a file, not a folder.")
    folders, images = paths.browse(root, folder, client().sees)
    # The service's own output folders (thumbnails, uploads, downloads), so the page can set them apart from the
    # user's: a thumbnail of thumbnails was one click away among the inputs.
    outputs = [name for name in folders if folder == root and name in paths.OUTPUT_DIRS]
    return jsonify({"path": paths.relative(root, folder), "folders": folders, "images": images, "outputs": outputs})


@blueprint.get("/images/file")
@params.takes(models=(params.BrowseQuery,))
def image_file():
    root = settings().images_root
    target = requests.resolve(params.validate(params.BrowseQuery, request.args.to_dict()).path, "path")
    served = paths.inside(root, target) if paths.is_image_name(target.name) else None
    if served is None:
        raise params.InvalidParameter(f"path {paths.relative(root, target)!r} is not an image file.")
    return send_file(served, mimetype=MEDIA_TYPES.get(served.suffix.lower(), "application/octet-stream"))

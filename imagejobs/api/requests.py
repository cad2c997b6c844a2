"""Reading a request: its parameters from the query string, form fields and a JSON body, the action it
asks for, and the images it names (a path, uploads or URLs)."""

from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from imagejobs import downloads, params, paths
from imagejobs.actions import ACTIONS, Action, AnyActionParams
from imagejobs.api.context import settings

REPEATABLE = {"imageUrl"}


def values() -> dict:
    """Parameters from the query string, form fields and a JSON object body, merged (the body wins).

    Each place is checked on its own: a malformed parameter is a 400 even where another place or the
    chosen action would make it moot. A parameter may appear once, except imageUrl, which may repeat.
    """
    merged = {}
    for source in (request.args, request.form):
        given_here = {}
        for name, given in source.lists():
            if len(given) > 1 and name not in REPEATABLE:
                raise params.InvalidParameter(f"Invalid parameter {name}: give it once, not {len(given)} times.")
            given_here[name] = given if name in REPEATABLE and len(given) > 1 else given[0]
        merged.update(checked(given_here))
    if request.mimetype == "application/json" and request.content_length:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise params.InvalidParameter('The JSON body must be an object, like {"imagePath": "Japan/a.jpg"}.')
        merged.update(
            checked({name: value for name, value in body.items() if value is not None}, strict=True)
        )  # null: not given
    elif request.content_length and request.mimetype not in (
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ):
        raise UnsupportedMediaType(
            "Send parameters as a query string, form fields, multipart/form-data or a JSON object."
        )
    return merged


def checked(given: dict, strict: bool = False) -> dict:
    """given, once every parameter of any action in it is well-formed (else InvalidParameter)."""
    if "action" in given:
        choose_action(given, "")
    params.validate(AnyActionParams, given, strict)
    return given


def choose_action(given: dict, default: str) -> Action:
    named = given.get("action", default)
    name = named.strip().lower() or default if isinstance(named, str) else repr(named)
    if name not in ACTIONS:
        raise params.InvalidParameter(f"Invalid parameter action: {name!r} is not one of {', '.join(ACTIONS)}.")
    return ACTIONS[name]


def named_images(given: dict, job_id: str) -> tuple[list[str], bool, str]:
    """(images: paths relative to the root, or URLs; whether they make a batch; what the user named)."""
    source = params.validate(params.Source, given)
    uploads = [f for f in request.files.getlist("image") if f.filename or f.content_length]
    if not uploads and request.files:
        raise params.InvalidParameter(
            f"Upload files in the form field 'image' (got {', '.join(map(repr, request.files))})."
        )
    ways = [
        name
        for name, present in (
            ("imagePath", source.imagePath),
            ("image uploads", uploads),
            ("imageUrl", source.imageUrl),
        )
        if present
    ]
    if len(ways) > 1:
        raise params.InvalidParameter(f"Name the images one way: {' and '.join(ways)} were both given.")
    if uploads:
        if len(uploads) > settings().max_upload_files:
            raise params.InvalidParameter(
                f"{len(uploads)} files were uploaded; the limit is {settings().max_upload_files} (MAX_UPLOAD_FILES)."
            )
        return store_uploads(uploads, job_id), len(uploads) > 1, "uploaded file" + "s" * (len(uploads) > 1)
    if source.imageUrl:
        return checked_urls(source.imageUrl), len(source.imageUrl) > 1, "image URL" + "s" * (len(source.imageUrl) > 1)
    if not source.imagePath:
        raise params.InvalidParameter(
            "Name an image: give imagePath (a file or folder under the images root), imageUrl, "
            "or upload files in the field 'image'."
        )
    return path_images(source)


def path_images(source: params.Source) -> tuple[list[str], bool, str]:
    """The image imagePath names, or the images of the folder it names (a batch)."""
    root, most = settings().images_root, settings().max_folder_images
    target = paths.resolve(root, source.imagePath)
    named = paths.relative(root, target)
    if target.is_file():
        return [named], False, named
    images = paths.list_images(root, target, source.recursive)
    if len(images) > most:
        raise params.InvalidParameter(
            f"The folder {named!r} holds {len(images)} images; "
            f"the limit is {most} (MAX_FOLDER_IMAGES): name a subfolder."
        )
    if not images:
        raise params.InvalidParameter(
            f"The folder {named!r} holds no images"
            f"{'' if source.recursive else ' directly (add recursive=true to include its subfolders)'}."
        )
    return images, True, named


def checked_urls(urls: list[str]) -> list[str]:
    """The URLs, each well-formed http(s); where they lead is checked by the worker that downloads them."""
    if len(urls) > settings().max_urls:
        raise params.InvalidParameter(
            f"{len(urls)} image URLs were given; the limit is {settings().max_urls} (MAX_URLS)."
        )
    try:
        return [downloads.validate_url(url) for url in urls]
    except downloads.DownloadError as exc:
        raise params.InvalidParameter(f"Invalid parameter imageUrl: {exc}") from None


def store_uploads(uploads, job_id: str) -> list[str]:
    """Save uploads under <root>/uploads/<jobId>/, each under a safe, distinct name."""
    root = settings().images_root
    folder = paths.upload_folder(root, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    stored = []
    for index, upload in enumerate(uploads):
        name = paths.safe_file_name(upload.filename, f"upload-{index}")
        if (folder / name).exists():
            name = f"{index}-{name}"
        upload.save(folder / name)
        stored.append(paths.relative(root, folder / name))
    return stored

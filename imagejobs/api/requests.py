"""Reading a request: its parameters from the query string, form fields and a JSON body, the action it
asks for, and the images it names (a path, uploads or URLs)."""

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from imagejobs import callbacks, downloads, inputs, params, paths
from imagejobs.actions import ACTIONS, ALIASES, Action, AnyActionParams
from imagejobs.api.context import client, redis, settings
from imagejobs.api.errors import TooLarge

# What a submit takes, wherever it comes from (query, form, JSON body); `image` is the uploads' field.
SUBMIT_PARAMETERS = frozenset(AnyActionParams.model_fields) | {"action", "image"}
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# A JSON body carries parameters and at most MAX_URLS URLs of 2,048 characters: far below this.
MAX_JSON_BYTES = 1024 * 1024


def values() -> dict:
    """Parameters from the query string, form fields and a JSON object body, merged (the body wins).

    Each place is checked on its own: a malformed parameter is a 400 even where another place or the
    chosen action would make it moot. A parameter may appear once, except imageUrl, which may repeat.
    """
    merged = {}
    for source in (request.args, form()):
        params.reject_unknown(source.keys(), SUBMIT_PARAMETERS)
        params.reject_repeated(source, params.REPEATABLE)
        given_here = {}
        for name, given in source.lists():
            given_here[name] = given if name in params.REPEATABLE and len(given) > 1 else given[0]
        merged.update(checked(given_here))
    body = json_body()
    if body is not None:
        params.reject_unknown(body.keys(), SUBMIT_PARAMETERS)
        merged.update(checked({name: value for name, value in body.items() if value is not None}, strict=True))
    elif has_body() and request.mimetype not in FORM_TYPES:
        raise UnsupportedMediaType(
            "Send parameters as a query string, form fields, multipart/form-data or a JSON object."
        )
    return merged


def has_body() -> bool:
    """Whether the request carries a body: a length, or chunks (Transfer-Encoding: chunked has no length)."""
    return bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()


def json_body() -> dict | None:
    """The JSON object a JSON request carries (sent with a length or in chunks), or None for no JSON body.
    Anything but an object of at most MAX_JSON_BYTES is a sentence (400, or 413 for its size); null values
    count as not given."""
    if request.mimetype != "application/json" or not has_body():
        return None
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise TooLarge(f"The JSON body is larger than the limit of {MAX_JSON_BYTES // 1024} KB.")
    data = request.stream.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise TooLarge(f"The JSON body is larger than the limit of {MAX_JSON_BYTES // 1024} KB.")
    try:
        body = params.load_json(data) if data else None
    except ValueError as exc:
        raise params.InvalidParameter(f"The JSON body is not usable: {exc}.") from None
    if not isinstance(body, dict):
        raise params.InvalidParameter('The JSON body must be an object, like {"imagePath": "Japan/a.jpg"}.')
    return body


def form():
    """The form fields (the files come with them), or 413 with a sentence naming the limit that was hit."""
    try:
        return request.form
    except RequestEntityTooLarge:
        most, limit = settings().max_upload_mb, request.max_content_length
        if request.content_length is not None:
            over_size = limit is not None and request.content_length > limit
        else:  # chunks: the server's stream stopped at the size limit
            stream = request.stream
            over_size = getattr(stream, "is_exhausted", False) and getattr(stream, "limit", None) == limit
        if over_size:
            raise TooLarge(f"The request is larger than the limit of {most} MB (MAX_UPLOAD_MB).") from None
        raise TooLarge(
            f"The form has more parts than {settings().max_upload_files} files (MAX_UPLOAD_FILES) and a few fields, "
            f"or a field longer than {request.max_form_memory_size // 1024} KB; send fewer files or shorter fields."
        ) from None


def checked(given: dict, strict: bool = False) -> dict:
    """given, once every parameter of any action in it is well-formed (else InvalidParameter)."""
    if "action" in given:
        choose_action(given, "")
    params.validate(AnyActionParams, given, strict)
    return given


def choose_action(given: dict, default: str) -> Action:
    named = given.get("action", default)
    name = named.strip().lower() or default if isinstance(named, str) else repr(named)
    name = ALIASES.get(name, name)
    if name not in ACTIONS:
        hint = params.did_you_mean(name, ACTIONS) or "."
        raise params.InvalidParameter(f"Invalid parameter action: {name!r} is not one of {', '.join(ACTIONS)}{hint}")
    return ACTIONS[name]


# What every action takes besides its own parameters.
COMMON_PARAMETERS = (
    frozenset(params.Source.model_fields) | frozenset(params.WaitQuery.model_fields) | {"action", "image"}
)


def reject_unused(given: dict, action: Action, route: str) -> None:
    """InvalidParameter for a parameter of another action, which this one would drop without a word (width on
    GET /imageapi, a size job, was ignored while a misspelt widht got "did you mean 'width'?")."""
    used = COMMON_PARAMETERS | frozenset(action.params.model_fields)
    for name in given:
        if name not in used:
            owners = [other.name for other in ACTIONS.values() if name in other.params.model_fields]
            raise params.InvalidParameter(
                f"Invalid parameter {name}: {route} runs {action.name}, which does not use it; {name} is for "
                f"{' and '.join(owners)} (POST /imageapi with action={owners[0]})."
            )


def named_images(given: dict, job_id: str) -> tuple[list[str], bool, str]:
    """(images: paths relative to the root, or URLs; whether they make a batch; what the user named).
    Uploads are stored, and the job's inputs (uploads, downloads) recorded as the client's."""
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
        inputs.record_owner(redis(), job_id, client().name, settings())
        stored = inputs.store_uploads(settings().images_root, job_id, uploads)
        return stored, len(uploads) > 1, "uploaded file" + "s" * (len(uploads) > 1)
    if source.imageUrl:
        urls = checked_urls(source.imageUrl)
        inputs.record_owner(redis(), job_id, client().name, settings())
        return urls, len(urls) > 1, "image URL" + "s" * (len(urls) > 1)
    if not source.imagePath:
        raise params.InvalidParameter(
            "Name an image: give imagePath (a file or folder under the images root), imageUrl, "
            "or upload files in the field 'image'."
        )
    return path_images(source)


def path_images(source: params.Source) -> tuple[list[str], bool, str]:
    """The image imagePath names, or the images of the folder it names (a batch): what the client may see."""
    root, most = settings().images_root, settings().max_folder_images
    target = resolve(source.imagePath, "imagePath")
    named = paths.relative(root, target)
    if target.is_file():
        return [named], False, named
    images = paths.list_images(root, target, source.recursive, most, client().sees)
    if len(images) > most:
        raise params.InvalidParameter(
            f"The folder {named!r} holds more than {most} images, the limit (MAX_FOLDER_IMAGES): name a subfolder."
        )
    if not images:
        raise params.InvalidParameter(
            f"The folder {named!r} holds no images"
            f"{'' if source.recursive else ' directly (add recursive=true to include its subfolders)'}."
        )
    return images, True, named


def checked_callback(url: str | None) -> str | None:
    """callbackUrl, if given, once it may be called: http(s), and leading to no private, loopback or link-local
    address unless ALLOWED_URL_NETWORKS allows it (checked again at every attempt: callbacks.py)."""
    if url is None:
        return None
    try:
        return callbacks.check_url(url, settings())
    except downloads.DownloadError as exc:
        raise params.InvalidParameter(f"Invalid parameter callbackUrl: {exc}") from None


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


def resolve(user_path: str, name: str):
    """The path a user named inside the root, if it is theirs to see (another client's uploads are, to them,
    nothing at all: the same 404)."""
    root = settings().images_root
    try:
        target = paths.resolve(root, user_path, name)
    except paths.PathNotFound as exc:
        near = paths.nearest_name(root, exc.missing) if exc.missing else None
        if near is None or not client().sees(near):
            raise
        raise paths.PathNotFound(f"{exc} Did you mean {near!r}?") from None
    if not client().sees(paths.relative(root, target)):
        raise paths.PathNotFound(f"Nothing is at {name} {paths.relative(root, target)!r} under the images root.")
    return target

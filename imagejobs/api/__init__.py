"""The HTTP API: `create_app(settings)` builds the Flask app; RestAPI.py makes the one gunicorn serves.

Routes, by resource (one blueprint a module):
  submit.py     GET /imageapi (sizes), POST /imageapi (any action) on paths, uploads or URLs
  results.py    GET /result, /result/<jobId> (status, result, wait=S); GET /result/file (the file a job made)
  browse.py     GET /images?path= (a folder's folders and images, for the page)
  callbacks.py  GET /callbacks/secret (what a client's callbacks are signed with)
  operators.py  GET /health, GET /metrics
  docs.py       GET /openapi.json, GET /actions (what the page builds its form from), GET / and /static/ (the page)
  dashboard.py  /rq/: rq-dashboard for operators, for JSON jobs, signed in and safe from other sites
Around them:
  requests.py   a request's parameters (query, form, JSON body) and the images it names
  hooks.py      tokens, timing, metrics and one log line per request
  errors.py     every error as JSON {"error": "..."}, never a traceback
  openapi.py    the OpenAPI 3.1 document, from the same models that validate requests

No image code lives here: the API validates, enqueues and answers.
"""

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.routing import BaseConverter

from imagejobs import config
from imagejobs.api import browse, callbacks, dashboard, docs, errors, hooks, operators, results, submit
from imagejobs.api.context import Service
from RedisConfig import connect


class JobIdConverter(BaseConverter):
    """A jobId in a path: never "file", so /result/file is only ever the file route (and its Allow header
    names its own methods, not those of /result/<jobId>)."""

    regex = r"(?!file$)[^/]+"


FORM_FIELDS = 100  # a form's parts beside its files: the parameters, with room to spare


def create_app(settings: config.Settings | None = None) -> Flask:
    """The API for these settings (default: the environment's). Refuses to build on a missing REDIS_URL
    (or one without a password when REQUIRE_REDIS_AUTH is set) and on a malformed ALLOWED_URL_NETWORKS."""
    settings = settings or config.settings
    settings.check()
    app = Flask(__name__)
    app.url_map.converters["job"] = JobIdConverter
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 1024 * 1024
    app.config["MAX_FORM_PARTS"] = settings.max_upload_files + FORM_FIELDS  # past it, our sentence names the limit
    app.json.sort_keys = False
    # Each connection the server holds may hold a Redis connection (a wait=S, for S seconds).
    redis = connect(settings, max_connections=settings.api_connections + 10)
    app.extensions["imagejobs"] = Service(settings, redis)
    for module in (submit, results, browse, callbacks, operators, docs):
        app.register_blueprint(module.blueprint)
    errors.register(app)
    hooks.register(app)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {dashboard.PREFIX: dashboard.create_dashboard(settings, redis)})
    return app

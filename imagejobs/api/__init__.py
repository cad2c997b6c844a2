"""The HTTP API: `create_app(settings)` builds the Flask app; RestAPI.py makes the one gunicorn serves.

Routes, by resource (one blueprint a module):
  submit.py     GET /imageapi (sizes), POST /imageapi (any action) on paths, uploads or URLs
  results.py    GET /result, /result/<jobId> (status, result, wait=S); GET /result/file (the file a job made)
  browse.py     GET /images?path= (a folder's folders and images, for the page)
  operators.py  GET /health, GET /metrics
  docs.py       GET /openapi.json, GET /actions (what the page builds its form from), GET / and /static/ (the page)
Around them:
  requests.py   a request's parameters (query, form, JSON body) and the images it names
  hooks.py      tokens, timing, metrics and one log line per request
  errors.py     every error as JSON {"error": "..."}, never a traceback
  openapi.py    the OpenAPI 3.1 document, from the same models that validate requests

No image code lives here: the API validates, enqueues and answers.
"""

from flask import Flask

from imagejobs import config
from imagejobs.api import browse, docs, errors, hooks, operators, results, submit
from imagejobs.api.context import Service
from RedisConfig import connect


def create_app(settings: config.Settings | None = None) -> Flask:
    """The API for these settings (default: the environment's). Refuses to build on a missing REDIS_URL
    (or one without a password when REQUIRE_REDIS_AUTH is set) and on a malformed ALLOWED_URL_NETWORKS."""
    settings = settings or config.settings
    settings.check()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 1024 * 1024
    app.json.sort_keys = False
    app.extensions["imagejobs"] = Service(settings, connect(settings))
    for module in (submit, results, browse, operators, docs):
        app.register_blueprint(module.blueprint)
    errors.register(app)
    hooks.register(app)
    return app

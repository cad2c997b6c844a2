"""The Flask app that gunicorn serves: `gunicorn -c gunicorn.conf.py RestAPI:app`.

It is built by imagejobs.api.create_app from the environment's settings; the routes are in
imagejobs/api/, one module per resource. Tests build apps of their own with create_app(settings).
"""

from imagejobs.api import create_app

app = create_app()

# Two images: `base` for the API (gunicorn) and the size/resize/plot workers,
# and `classifier` (the same plus TensorFlow Lite and the model) for the classify
# worker. The compose file picks the process with `command:`. Both start from
# `runtime` (Python, the user, the core dependencies) and copy the code last, so
# a change of code rebuilds neither image's dependencies (TensorFlow's install
# alone is half a minute).
FROM python:3.11-slim AS runtime

# UID/GID of the runtime user. ./images and ./logs are bind-mounted from the
# host in docker-compose.yml, so this user must be able to write there: keep it
# equal to the owner of those folders (`id -u` / `id -g`, set in .env).
ARG APP_UID=1000
ARG APP_GID=1000

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMAGES_DIR=/ImageResize/images \
    LOGS_DIR=/ImageResize/logs \
    PORT=5000 \
    BIND_HOST=0.0.0.0

WORKDIR /ImageResize

# Non-root user and the two writable folders; nothing else under /ImageResize
# is writable by it (the code stays owned by root). --non-unique: the host
# owner's ids may already name a user or group of the base image (gid 100,
# "users", is common). /run/imagejobs-secrets is
# where docker-compose.yml mounts the volume holding Redis's password: a new
# named volume takes this folder's owner and mode (app, 0750) at its first
# mount, so the redis-password service, running as app, can write there and
# only app's user and group (which the redis service is given) can read it.
RUN groupadd --non-unique --gid "${APP_GID}" app \
    && useradd --no-log-init --non-unique --uid "${APP_UID}" --gid app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /ImageResize/images /ImageResize/logs /run/imagejobs-secrets \
    && chown app:app /ImageResize/images /ImageResize/logs /run/imagejobs-secrets \
    && chmod 0750 /run/imagejobs-secrets

# Dependencies first so that code changes do not reinstall them.
COPY requirements-core.txt .
RUN pip install --no-cache-dir -r requirements-core.txt

# The API and the size/resize/plot workers.
FROM runtime AS base
# An ARG ends with its stage: each stage that reads one declares it again.
ARG APP_UID=1000
ARG APP_GID=1000

# The code (.dockerignore keeps images/, logs/, data, .git, .env, ... out).
COPY . .

# Numeric, so runtimes can verify it is not root (runAsNonRoot).
USER ${APP_UID}:${APP_GID}

EXPOSE 5000

# No curl in slim: probe /health with the standard library, on ${PORT:-5000}
# (read from the environment at run time). This fits the API; the worker
# service in docker-compose.yml replaces it with `python worker.py --check`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('PORT') or '5000'), timeout=4)"]

# Same command as run.py and the end-to-end tests (asserted in TestStack.py).
CMD ["gunicorn", "-c", "gunicorn.conf.py", "RestAPI:app"]

# The classify worker: the model's libraries, and EfficientNet-Lite0 converted
# to TFLite now (the build may reach PyPI; the running container reaches
# nothing), so the worker starts in a second instead of converting.
FROM runtime AS classifier
# Without these two lines `USER ${APP_UID}:${APP_GID}` below read `USER :`,
# and the classify worker ran as root.
ARG APP_UID=1000
ARG APP_GID=1000
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV CLASSIFIER_CACHE_DIR=/opt/imageapi-cache
RUN python -c "from imagejobs.classifier import Classifier; Classifier.load(cache_dir='/opt/imageapi-cache')" \
    && chmod -R a+rX /opt/imageapi-cache
USER ${APP_UID}:${APP_GID}
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "worker.py", "--check"]
CMD ["python", "worker.py", "classify"]

"""Each container image's own dependencies, proven without a container engine: what a stage of the
Dockerfile pip-installs goes into a fresh venv (nothing else of this machine's), `pip check` passes, and
every entry point that image runs starts there.

Why: rq-dashboard 0.9 imports `six` without declaring it, and python-dateutil 4.0 (what pip picks today)
no longer brings it in. Every environment with the whole of requirements.txt hid that, because TensorFlow
brings `six`; the API image, which installs requirements-core.txt alone, never started
(`ModuleNotFoundError: No module named 'six'` in rq_dashboard/web.py, gunicorn's "Worker failed to boot").
On that main, test_the_app_image_starts_its_entry_points failed with that very error.

The venv follows the Dockerfile: what the base image installs first (the API and worker image), then what
the classifier image installs on top of that (the core again, which changes nothing, and the model's
libraries). Installing takes about a
minute for the base and two more for TensorFlow (from pip's cache when the suite's own install filled it);
the test is skipped, saying so, when the package index cannot be reached.
"""

import functools
import os
import re
import sys
import venv
from pathlib import Path

import pytest

from tests import dockerfile
from tests.support import run_command
from tests.TestRequirements import index_unreachable

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 900


def run(argv, env=None, timeout=INSTALL_TIMEOUT) -> str:
    """What a command in the repository printed; AssertionError with its output if it failed."""
    return run_command(argv, env=env, timeout=timeout, cwd=ROOT).stdout


@functools.cache
def image_venv(base: Path) -> Path:
    """A venv with nothing but pip, outside this suite's own (no --system-site-packages)."""
    venv.EnvBuilder(with_pip=True, clear=True).create(base)
    return base / "bin" / "python"


def install(python: Path, stage: str) -> None:
    files = [arg for name in dockerfile.pip_requirements(stage) for arg in ("-r", str(ROOT / name))]
    assert files, f"the {stage} stage installs no requirements file"
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *files])
    run([python, "-m", "pip", "check"], timeout=120)


def app_environment(tmp: Path) -> dict:
    """What the containers set, pointing at a Redis nobody needs: importing and building the app connects to
    nothing. Nothing of this suite's own venv may leak in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        REDIS_URL="redis://127.0.0.1:9/0",
        IMAGES_DIR=str(tmp / "images"),
        LOGS_DIR=str(tmp / "logs"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp / "metrics"),
    )
    (tmp / "metrics").mkdir(exist_ok=True)
    return env


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    if sys.platform != "linux":
        pytest.skip("the images are Linux images")
    reason = index_unreachable()
    if reason:
        pytest.skip(f"the package index cannot be reached ({reason}): nothing can be installed")
    python = image_venv(tmp_path_factory.mktemp("image-venv") / "venv")
    install(python, "base")
    return python


# What the API and worker image runs (docker-compose.yml's commands and the redis-password service), each
# imported as its process imports it: the app is built, so rq-dashboard's blueprint is loaded too.
APP_IMAGE_STARTS = (
    "import RestAPI; assert RestAPI.app.url_map",
    "import gunicorn.workers.ggevent",  # gunicorn.conf.py's worker_class
    "import worker",
    "import imagejobs.secrets_file",
)


def test_the_app_image_starts_its_entry_points(python, tmp_path):
    env = app_environment(tmp_path)
    for code in APP_IMAGE_STARTS:
        run([python, "-c", code], env=env, timeout=120)
    said = run([python, "-m", "gunicorn", "--check-config", "-c", "gunicorn.conf.py", "RestAPI:app"], env=env)
    assert "Error" not in said


def test_the_app_image_has_no_tensorflow(python):
    """The API and worker image stays small: the model's libraries are the classifier image's alone."""
    listed = run([python, "-m", "pip", "list", "--format=freeze"], timeout=120).lower()
    for heavy in ("tensorflow", "keras", "ai-edge-litert"):
        assert not re.search(rf"^{heavy}[-=]", listed, re.M), heavy


def test_the_classifier_image_starts_its_worker_with_the_model(python, tmp_path):
    """Installed on top of the base, as the classifier stage is built FROM base; then what that stage runs at
    build time (the model converted to TFLite) and the worker's module."""
    install(python, "classifier")
    env = app_environment(tmp_path)
    cache = tmp_path / "model-cache"
    load = f"from imagejobs.classifier import Classifier; Classifier.load(cache_dir={str(cache)!r})"
    run([python, "-c", load], env=env)
    run([python, "-c", "import worker; from imagejobs.processors import classify"], env=env, timeout=120)

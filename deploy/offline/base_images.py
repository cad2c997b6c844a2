"""Stand-ins for the stack's two base images, built from Debian's packages, for a machine that cannot pull
them (an air-gapped CI, like this project's own, reaches only Debian's packages and PyPI):

    python deploy/offline/base_images.py docker     # or: podman

Each stand-in is imported under the exact name the Dockerfile and docker-compose.yml use, so both are
used unchanged afterwards (`docker compose up --build`). A name the engine already has is left alone:
a real `python:3.11-slim` is never replaced. Needs root, mmdebstrap and the machine's apt sources.

- `python:3.11-slim`: Debian bookworm's Python (3.11) in a minimal root, with a venv made at /usr/local
  so that `python` and `pip` are where the official image has them.
- `redis:7-alpine`: Debian's redis-server 7 with the official image's user (redis, uid 999, gid 1000),
  its /data volume and an entrypoint that drops to that user when started as root, as the official
  image's does.

Both carry the machine's extra CA certificates (/usr/local/share/ca-certificates) and point pip at the
system bundle: where TLS to the registries is re-signed by a proxy, pip in the build cannot install
otherwise. Nothing else of the machine goes into them.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
SUITE = "bookworm"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Documentation, manuals and translations: nothing in a container reads them.
SLIM = [
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
]
# Run in the new root (mmdebstrap gives it as $1) after the packages: the machine's extra CAs, pip told to use
# the system bundle, and the package lists dropped.
TRUST = (
    f'if ls {EXTRA_CAS}/*.crt >/dev/null 2>&1; then cp {EXTRA_CAS}/*.crt "$1/usr/local/share/ca-certificates/"; fi'
    ' && chroot "$1" update-ca-certificates >/dev/null'
    ' && printf "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n" > "$1/etc/pip.conf"'
)
CLEAN = 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log'

# The official redis image's entrypoint, in POSIX sh: an option or a .conf file first means redis-server;
# started as root, it gives /data to redis and runs again as redis.
REDIS_ENTRYPOINT = """#!/bin/sh
set -e
case "$1" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \\! -user redis -exec chown redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
exec "$@"
"""


@dataclass(frozen=True)
class StandIn:
    name: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...]
    changes: tuple[str, ...]


STAND_INS = (
    StandIn(
        name="python:3.11-slim",
        packages=("python3", "python3-venv", "netbase", "ca-certificates"),
        hooks=(TRUST, 'chroot "$1" python3 -m venv /usr/local', CLEAN),
        changes=(f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
    ),
    StandIn(
        name="redis:7-alpine",
        packages=("redis-server", "ca-certificates"),
        hooks=(
            TRUST,
            'chroot "$1" sh -c "groupmod -g 1000 redis && usermod -u 999 -g 1000 redis'
            ' && mkdir -p /data && chown redis:redis /data"',
            "cat > \"$1/usr/local/bin/docker-entrypoint.sh\" <<'EOF'\n"
            + REDIS_ENTRYPOINT
            + 'EOF\nchmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"',
            CLEAN,
        ),
        changes=(
            f"ENV PATH={PATH}",
            "WORKDIR /data",
            "VOLUME /data",
            "EXPOSE 6379",
            'ENTRYPOINT ["docker-entrypoint.sh"]',
            'CMD ["redis-server"]',
        ),
    ),
)


def has_image(engine: str, name: str, env=None) -> bool:
    return subprocess.run([engine, "image", "inspect", name], capture_output=True, env=env).returncode == 0


def build_root(stand_in: StandIn, folder: Path) -> Path:
    """The stand-in's root file system as a tar, built by mmdebstrap (about a minute)."""
    tar = folder / (stand_in.name.replace(":", "_") + ".tar")
    if tar.exists():
        return tar
    command = [
        "mmdebstrap",
        "--variant=minbase",
        "--quiet",
        "--format=tar",
        f"--include={','.join(stand_in.packages)}",
        *SLIM,
        *(f"--customize-hook={hook}" for hook in stand_in.hooks),
        SUITE,
        str(tar) + ".partial",
        str(SOURCES),
    ]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    Path(str(tar) + ".partial").rename(tar)
    return tar


def import_root(engine: str, stand_in: StandIn, tar: Path, env=None) -> None:
    changes = [arg for change in stand_in.changes for arg in ("--change", change)]
    subprocess.run([engine, "import", *changes, str(tar), stand_in.name], check=True, capture_output=True, env=env)
    if engine == "podman":  # podman names an import localhost/NAME; builds and compose look for docker.io's name
        subprocess.run([engine, "tag", stand_in.name, f"docker.io/library/{stand_in.name}"], check=True, env=env)


def ensure(engine: str, cache: Path, env=None) -> list[str]:
    """Import a stand-in for each base image the engine lacks; the names imported. env: the environment the
    engine's commands need (DOCKER_HOST, CONTAINERS_CONF), this process's by default."""
    missing = [stand_in for stand_in in STAND_INS if not has_image(engine, stand_in.name, env)]
    if missing and not shutil.which("mmdebstrap"):
        raise RuntimeError("the base images cannot be pulled and mmdebstrap is not installed to build stand-ins")
    cache.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(len(STAND_INS)) as pool:  # mostly waiting on downloads and dpkg: side by side
        roots = list(pool.map(lambda stand_in: build_root(stand_in, cache), missing))
    for stand_in, root in zip(missing, roots):
        import_root(engine, stand_in, root, env)
    return [stand_in.name for stand_in in missing]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("docker", "podman"))
    parser.add_argument(
        "--cache", type=Path, help="keep the built root file systems here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="base-images-") as scratch:
        imported = ensure(args.engine, args.cache or Path(scratch))
    print(f"imported {', '.join(imported)}" if imported else "every base image is there already")
    return 0


if __name__ == "__main__":
    sys.exit(main())

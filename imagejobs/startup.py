"""Checks a process makes before it serves anything, so that a misconfigured host stops it with one line
that says what to do, instead of failing later one job or one log line at a time.

In the containers the images root and the logs folder are bind-mounted from the host: when the
containers' user (APP_UID/APP_GID, built into the image) is not the host owner of ./images and ./logs,
nothing can be written there. check_writable finds that at start.
"""

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class CannotStart(Exception):
    """A one-line reason the process cannot start."""


def check_writable(folders: Iterable[str | os.PathLike]) -> None:
    """Create (if missing) each folder, then create and remove a temporary file in it; raise CannotStart
    naming the first folder where that fails, who this process is, who owns the folder, and the fix."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise CannotStart(_reason(folder, exc)) from None


def _reason(folder: Path, exc: OSError) -> str:
    uid, gid = os.geteuid(), os.getegid()
    me = f"uid {uid} gid {gid}"
    owner = _nearest_existing(folder)
    if owner is None:
        return f"cannot write in {folder} ({exc.strerror}) as {me}, and none of its parents can be examined"
    st = owner.stat()
    where = "it is" if owner == folder else f"{owner}, its nearest parent this process can see, is"
    found = (
        f"cannot write in {folder} ({exc.strerror}): this process runs as {me}; "
        f"{where} owned by uid {st.st_uid} gid {st.st_gid} (mode {st.st_mode & 0o7777:04o})"
    )
    if exc.errno == errno.EROFS:
        advice = "it is on a read-only file system: mount it read-write"
    elif not owner.is_dir():
        advice = f"{owner} is not a folder: point the setting at a folder"
    elif st.st_uid == 0:
        advice = (
            "it belongs to root (Docker creates a missing bind-mounted folder as root): on the host, give the "
            'folder to your user (sudo chown -R "$(id -u):$(id -g)" <folder>), set APP_UID and APP_GID in .env to '
            "`id -u` and `id -g`, and rebuild: docker compose up -d --build"
        )
    elif st.st_uid == uid:
        advice = "it is this user's own folder but its mode forbids writing: make it writable (chmod u+rwx)"
    else:
        advice = (
            f"run as its owner: set APP_UID={st.st_uid} and APP_GID={st.st_gid} in .env (`id -u` and `id -g` of "
            f"the folder's owner on the host) and rebuild: docker compose up -d --build; or make it writable by {me}"
        )
    return f"{found}. Fix: {advice}"


def _nearest_existing(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        try:
            candidate.stat()
        except OSError:
            continue
        return candidate
    return None

"""imagejobs/startup.py: a process that cannot write in the images root or the logs folder stops at start
with one line naming the folder, who the process runs as, who owns the folder, and the fix.

    python -m pytest tests/TestStartup.py -q -p no:cacheprovider

Root ignores permissions, so when the suite runs as root the read-only cases are checked in a forked
child that has switched to another user (os.setuid) first. (A new interpreter started with
preexec_fn=os.setuid cannot be used: it may live where that user cannot reach, as under /root.)
"""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from imagejobs import startup
from imagejobs.startup import CannotStart, check_writable
from tests.support import ROOT

NOBODY = 65534  # uid and gid of `nobody`: a user that owns nothing here
OTHER_OWNER = 12345  # an owner that is neither root nor the checking user


def as_user(uid, gid, folder):
    """check_writable([folder]) in a forked child running as uid/gid: "OK", or the CannotStart message."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running any of pytest's cleanup
        status = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                check_writable([folder])
                answer = "OK"
            except CannotStart as exc:
                answer = str(exc)
            os.write(write_end, answer.encode())
        except BaseException as exc:  # anything else is a failure to report
            os.write(write_end, f"child failed: {exc!r}".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        answer = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return answer


@pytest.fixture
def shared_tmp():
    """A folder another user can reach (pytest's tmp_path is private to this user)."""
    path = Path(tempfile.mkdtemp(prefix="imageapi-startup-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def test_a_writable_folder_passes_and_is_left_as_it_was(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    check_writable([tmp_path, str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


def test_a_missing_folder_is_created(tmp_path):
    check_writable([tmp_path / "logs" / "deeper"])
    assert (tmp_path / "logs" / "deeper").is_dir()


def test_a_path_through_a_file_cannot_start(tmp_path):
    (tmp_path / "images").write_text("not a folder")
    with pytest.raises(CannotStart) as caught:
        check_writable([tmp_path, tmp_path / "images" / "sub"])
    message = str(caught.value)
    assert f"cannot write in {tmp_path / 'images' / 'sub'}" in message
    assert f"{tmp_path / 'images'} is not a folder" in message
    assert "\n" not in message


def test_a_read_only_file_system_says_so(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(startup.tempfile, "NamedTemporaryFile", read_only)
    with pytest.raises(CannotStart, match="read-only file system: mount it read-write"):
        check_writable([tmp_path])


def test_a_folder_of_another_user_names_both_and_the_fix(shared_tmp):
    folder = shared_tmp / "images"
    folder.mkdir(mode=0o755)
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        os.chown(folder, OTHER_OWNER, OTHER_OWNER)
        message = as_user(NOBODY, NOBODY, folder)
        me, owner = (NOBODY, NOBODY), (OTHER_OWNER, OTHER_OWNER)
    else:
        folder.chmod(0o555)  # the only way to deny a non-root user its own folder
        if os.access(folder, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (a file system without permissions?)")
        try:
            check_writable([folder])
        except CannotStart as exc:
            message = str(exc)
        else:
            pytest.fail("a read-only folder passed")
        me, owner = (uid, gid), (uid, gid)
    assert message != "OK", "a folder of another user passed"
    assert f"cannot write in {folder} (Permission denied)" in message
    assert f"this process runs as uid {me[0]} gid {me[1]}" in message
    assert f"it is owned by uid {owner[0]} gid {owner[1]} (mode 0" in message
    if uid == 0:
        assert f"set APP_UID={OTHER_OWNER} and APP_GID={OTHER_OWNER} in .env" in message
        assert "id -u" in message and "id -g" in message and "docker compose up -d --build" in message
    else:
        assert "chmod" in message
    assert "\n" not in message


def test_a_folder_of_root_says_how_to_give_it_to_the_user(shared_tmp):
    """Docker creates a missing bind-mounted folder as root: the advice is a chown, not APP_UID=0."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a root-owned folder and to switch to another user")
    folder = shared_tmp / "logs"
    folder.mkdir(mode=0o755)
    message = as_user(NOBODY, NOBODY, folder)
    assert f"cannot write in {folder} (Permission denied)" in message
    assert "owned by uid 0 gid 0" in message
    assert "chown" in message and "APP_UID" in message and "APP_UID=0" not in message


def test_the_other_user_can_write_where_allowed(shared_tmp):
    """The forked check itself works: the same user passes in a folder it may write to."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    folder = shared_tmp / "open"
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    assert as_user(NOBODY, NOBODY, folder) == "OK"


@pytest.mark.parametrize("setting", ["IMAGES_DIR", "LOGS_DIR"])
def test_the_worker_stops_with_the_line_on_stderr(tmp_path, setting):
    (tmp_path / "file").write_text("")
    env = {**os.environ, setting: str(tmp_path / "file" / "folder")}
    done = subprocess.run(
        [sys.executable, "worker.py", "images"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("worker: cannot write in ") and str(tmp_path / "file" / "folder") in lines[0]

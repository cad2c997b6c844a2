"""imagejobs/secrets_file.py: the Redis password the compose stack's redis-password service makes once.

python -m pytest tests/TestSecretsFile.py -q -p no:cacheprovider
"""

import os
import re
import stat
import subprocess
import sys
from urllib.parse import quote

import pytest
from redis import Redis

from imagejobs import embedded_redis, secrets_file
from tests.support import ROOT

PASSWORD_FILE = "redis-password"
CONF_FILE = "redis.conf"


def run(tmp_path, password=None, umask=None, conf=True):
    """`python -m imagejobs.secrets_file` as the compose service runs it; REDIS_PASSWORD set only if given."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    if password is not None:
        env["REDIS_PASSWORD"] = password
    argv = [sys.executable, "-m", "imagejobs.secrets_file", str(tmp_path / PASSWORD_FILE)]
    if conf:
        argv += ["--redis-conf", str(tmp_path / CONF_FILE)]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], ids=["umask-000", "umask-022", "umask-077"])
def test_a_random_password_is_made_once_with_mode_0640(tmp_path, umask):
    done = run(tmp_path, umask=umask)
    assert done.returncode == 0, done.stderr
    password = (tmp_path / PASSWORD_FILE).read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", password)  # secrets.token_urlsafe(32)
    assert password not in done.stdout + done.stderr
    assert "a new random password" in done.stdout
    for name in (PASSWORD_FILE, CONF_FILE):
        assert mode(tmp_path / name) == 0o640, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    again = run(tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / PASSWORD_FILE).read_text().strip() == password  # kept
    assert "kept" in again.stdout and password not in again.stdout + again.stderr


def test_each_volume_gets_its_own_password(tmp_path):
    passwords = set()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        assert run(tmp_path / name).returncode == 0
        passwords.add((tmp_path / name / PASSWORD_FILE).read_text())
    assert len(passwords) == 2


def test_the_operators_password_is_used_when_set(tmp_path):
    done = run(tmp_path, password="  my own password  ")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / PASSWORD_FILE).read_text() == "my own password\n"  # the readers strip it too
    assert "REDIS_PASSWORD" in done.stdout and "my own password" not in done.stdout + done.stderr
    assert run(tmp_path, password="my own password").returncode == 0  # the same one again: fine


def test_an_empty_redis_password_means_a_random_one(tmp_path):
    assert run(tmp_path, password="").returncode == 0
    assert len((tmp_path / PASSWORD_FILE).read_text().strip()) == 43


def test_a_changed_redis_password_is_refused_without_showing_either(tmp_path):
    assert run(tmp_path, password="first-password").returncode == 0
    done = run(tmp_path, password="second-password")
    assert done.returncode == 1
    assert "differs from the password stored in" in done.stderr and "docker volume rm" in done.stderr
    assert "first-password" not in done.stdout + done.stderr and "second-password" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / PASSWORD_FILE).read_text().strip() == "first-password"


@pytest.mark.parametrize("password", ["change-me", "bad\npassword"])
def test_a_placeholder_or_a_control_character_is_refused(tmp_path, password):
    done = run(tmp_path, password=password)
    assert done.returncode == 1 and "REDIS_PASSWORD" in done.stderr
    assert not (tmp_path / PASSWORD_FILE).exists()


def test_an_empty_password_file_is_filled(tmp_path):
    (tmp_path / PASSWORD_FILE).write_text("")
    assert run(tmp_path).returncode == 0
    assert len((tmp_path / PASSWORD_FILE).read_text().strip()) == 43


def test_the_redis_conf_follows_the_password_file(tmp_path):
    (tmp_path / PASSWORD_FILE).write_text("stored-password\n")
    (tmp_path / CONF_FILE).write_text("requirepass stale\n")
    done = run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / CONF_FILE).read_text() == secrets_file.redis_conf_text("stored-password")
    assert "kept" in run(tmp_path).stdout.splitlines()[-1]  # unchanged the second time


def test_without_redis_conf_only_the_password_file_is_written(tmp_path):
    assert run(tmp_path, conf=False).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [PASSWORD_FILE]


def test_an_unwritable_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    folder = tmp_path / "file" / "secrets"  # under a regular file: not even root can write there
    done = run(folder)
    assert done.returncode == 1
    assert str(folder) in done.stderr and "uid" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("password", ['quote " and \\ backslash', "spaces, $dollar 'single' #hash", "né ü 密码"])
def test_redis_accepts_the_password_through_the_conf(tmp_path, password):
    """Redis started as the compose service starts it (`redis-server redis.conf ...`) requires exactly the
    password in the file, whatever characters it has."""
    assert run(tmp_path, password=password).returncode == 0
    port = embedded_redis.free_port()
    argv = [embedded_redis.server_binary(), str(tmp_path / CONF_FILE), "--port", str(port), "--bind", "127.0.0.1"]
    process = subprocess.Popen(
        [*argv, "--dir", str(tmp_path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        stored = (tmp_path / PASSWORD_FILE).read_text().strip()
        assert stored == password.strip()
        embedded_redis.wait_until_up(f"redis://:{quote(stored, safe='')}@127.0.0.1:{port}/0", process)
        client = Redis(host="127.0.0.1", port=port, password=stored, socket_timeout=5)
        assert client.ping() is True
        client.close()
    finally:
        process.terminate()
        process.wait(10)
        process.stderr.close()


def test_the_module_imports_only_the_standard_library():
    """It runs before anything else of the service (the compose one-shot): keep it free of dependencies."""
    code = (
        "import sys, imagejobs.secrets_file; print(sorted(m for m in ('redis', 'rq', 'pydantic') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

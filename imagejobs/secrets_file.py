"""Redis's password for the compose stack, made once:
`python -m imagejobs.secrets_file PATH [--redis-conf CONF]`.

The one-shot `redis-password` service of docker-compose.yml runs this before Redis starts. PATH (in a
named volume) gets REDIS_PASSWORD from the environment when the operator set one, else a random
password from the `secrets` module, and is then kept: a later run finds it and changes nothing (it
refuses, exit 1, when REDIS_PASSWORD is set to another password than the kept one, rather than ignore
it; Redis then does not start, and the line says how to change the password). With
--redis-conf, CONF gets a Redis config include holding `requirepass`, so that Redis reads its password
from a file (`redis-server CONF ...`), never from a command line. The apps read PATH through
REDIS_PASSWORD_FILE; the Redis healthcheck reads it into REDISCLI_AUTH.

Both files are written atomically with mode 0640 (owner: the user this runs as; group: its group, which
the Redis container is given with `group_add`). The password is never printed. Only the standard library
is imported: this runs before anything else of the service.
"""

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

ENV_VAR = "REDIS_PASSWORD"
FILE_MODE = 0o640
RANDOM_BYTES = 32  # token_urlsafe(32): 43 URL-safe characters, 256 bits
PLACEHOLDERS = frozenset({"change-me", "changeme", "password"})  # example values that must never become the password


class SecretFileError(Exception):
    """A one-line reason the password file cannot be made; it never contains the password."""


def chosen_password(environ=os.environ) -> str | None:
    """REDIS_PASSWORD from the environment (surrounding spaces dropped, as the readers of the file drop them),
    or None when it is unset or empty."""
    password = (environ.get(ENV_VAR) or "").strip()
    if not password:
        return None
    if password in PLACEHOLDERS:
        raise SecretFileError(
            f"{ENV_VAR} is the example placeholder: choose a real password, or unset it for a random one"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in password):
        raise SecretFileError(f"{ENV_VAR} contains a control character (a newline?): it cannot be used")
    return password


def ensure_password(path: Path, environ=os.environ) -> tuple[str, str]:
    """The password stored in `path`, written first if the file is missing (or empty). Returns the password
    and what was done, in words fit for a log line (without the password)."""
    chosen = chosen_password(environ)
    stored = _read(path)
    if stored:
        if chosen is not None and chosen != stored:
            raise SecretFileError(
                f"{ENV_VAR} differs from the password stored in {path} at the first start, which stays in use: "
                f"unset {ENV_VAR}, or to change the password stop the stack and remove the volume that holds {path} "
                "(docker compose down; docker volume rm <project>_redis-secrets), then start it again"
            )
        return stored, f"kept the Redis password in {path}"
    password = chosen if chosen is not None else secrets.token_urlsafe(RANDOM_BYTES)
    _write(path, password + "\n")
    origin = ENV_VAR if chosen is not None else "a new random password"
    return password, f"wrote {origin} to {path}"


def redis_conf_text(password: str) -> str:
    """A Redis config include that sets the password, quoted for Redis's config parser (sdssplitargs)."""
    return (
        "# Written by `python -m imagejobs.secrets_file` (the redis-password service of docker-compose.yml).\n"
        f"requirepass {_redis_quote(password)}\n"
    )


def ensure_redis_conf(path: Path, password: str) -> str:
    """Write the config include unless it already says exactly this."""
    text = redis_conf_text(password)
    if _read(path, strip=False) == text:
        return f"kept {path}"
    _write(path, text)
    return f"wrote {path}"


def _redis_quote(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def _read(path: Path, strip: bool = True) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretFileError(
            f"cannot read {path} ({exc.strerror}) {_who(path)}; if the volume was made with other APP_UID/APP_GID, "
            "remove it to make a new password (docker compose down; docker volume rm <project>_redis-secrets)"
        ) from None
    return text.strip() if strip else text


def _write(path: Path, text: str) -> None:
    """Write `text` to `path` with FILE_MODE whatever the umask: a temporary file in the same folder,
    then renamed over, so a reader never sees half a file."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise SecretFileError(f"cannot write in {path.parent} ({exc.strerror}) {_who(path.parent)}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise SecretFileError(f"cannot write {path} ({exc.strerror}) {_who(path.parent)}") from None


def _who(path: Path) -> str:
    """Who this process is and who owns `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            st = candidate.stat()
        except OSError:
            continue
        return (
            f"as uid {os.geteuid()} gid {os.getegid()}; {candidate} is owned by uid {st.st_uid} gid {st.st_gid} "
            f"(mode {st.st_mode & 0o7777:04o})"
        )
    return f"as uid {os.geteuid()} gid {os.getegid()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the password file (created if missing, kept otherwise)")
    parser.add_argument("--redis-conf", type=Path, help="also write a Redis config include with requirepass here")
    args = parser.parse_args(argv)
    try:
        password, done = ensure_password(args.path)
        print(f"redis-password: {done}", flush=True)
        if args.redis_conf:
            print(f"redis-password: {ensure_redis_conf(args.redis_conf, password)}", flush=True)
    except SecretFileError as exc:
        print(f"redis-password: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

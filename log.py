"""One logging setup for every process: one line per event, to stdout and to a file per process.

A line reads::

    2026-11-23T02:11:03.123Z service=worker script=tasks.py pid=42 job=4f1c... action=resize level=INFO msg="..."

The message is escaped (control characters, quotes, backslashes), so user input inside it
can never start a new line or close the quoted field: a log line cannot be forged.

With LOG_FORMAT=json a line is one JSON object with the same fields (and an exception's traceback in
"exc", and any JSON-serialisable `extra=` field); json.dumps escapes control characters itself::

    {"time": "2026-11-23T02:11:03.123Z", "service": "worker", "script": "tasks.py", "pid": 42, ...}
"""

import json
import logging
import os
import socket
import sys
import time

from imagejobs.config import settings

_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"'}
_ESCAPES.update({c: f"\\x{c:02x}" for c in [*range(32), 127, 0x85]})
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape(text: str) -> str:
    """Make text safe inside a one-line, double-quoted log field."""
    return text.translate(_ESCAPES)


def _current_job():
    """The RQ job this worker runs now, if any (None in the API). A process that has not imported rq runs no
    job, and logging must not import it (and redis) there: gunicorn's master logs before gevent patches."""
    rq = sys.modules.get("rq")
    return rq.get_current_job() if rq is not None else None


class _ContextFilter(logging.Filter):
    """Adds the job id and action: from `extra=` in the API, from the running RQ job in a worker."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            job = _current_job()
            record.job_id = job.id if job else "-"
            record.action = job.meta.get("action", "-") if job else "-"
        record.action = getattr(record, "action", "-")
        return True


class _LineFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def formatTime(self, record, datefmt=None):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return (
            f"{self.formatTime(record)} service={self.service} script={record.filename} "
            f"pid={record.process} job={escape(str(record.job_id))} action={escape(str(record.action))} "
            f'level={record.levelname} msg="{escape(message)}"'
        )


# What every LogRecord has; any other attribute came from `extra=` (job_id and action are named fields).
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "job_id", "action"}


class _JsonFormatter(_LineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": self.formatTime(record),
            "service": self.service,
            "script": record.filename,
            "pid": record.process,
            "job": str(record.job_id),
            "action": str(record.action),
            "level": record.levelname,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in fields:
                try:
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError):
                    continue  # not JSON-serialisable: left out
                fields[name] = value
        # ASCII only: even U+2028 or U+0085, which some readers take for a line break, is escaped.
        return json.dumps(fields, allow_nan=False)


def setup_logging(service: str, level: int = logging.INFO) -> logging.Logger:
    """Send every logger of this process to stdout and to LOGS_DIR/<service>-<host>-<pid>.log (containers
    share the logs folder and may reuse pids), as key=value lines or, with LOG_FORMAT=json, JSON objects;
    call once per process."""
    formatter = (_JsonFormatter if settings.log_format == "json" else _LineFormatter)(service)
    handlers = [logging.StreamHandler(sys.stdout)]
    try:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.FileHandler(
                settings.logs_dir / f"{service}-{socket.gethostname()}-{os.getpid()}.log", encoding="utf-8"
            )
        )
    except OSError as exc:
        print(
            f"logs folder {settings.logs_dir} is not writable ({exc.strerror}); logging to stdout only", file=sys.stderr
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_ContextFilter())
        root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(service)

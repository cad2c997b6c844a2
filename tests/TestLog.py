"""log.py: one line per event, with its fields, and user input that cannot forge a line."""

import json
import logging
import os
import socket

import pytest

import log


@pytest.mark.parametrize(
    "hostile, shown",
    [
        ("a\nfake line", "a\\x0afake line"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ('quote " closes', 'quote \\" closes'),
        ("back\\slash", "back\\\\slash"),
        ("line\u2028sep", "line\\u2028sep"),
        ("unicode café 東京", "unicode café 東京"),
    ],
)
def test_user_input_cannot_forge_a_line(hostile, shown):
    assert log.escape(hostile) == shown


def test_a_line_carries_time_service_script_pid_job_action_level(capsys):
    log.setup_logging("worker")
    logging.getLogger("x").warning("done %s", "a\nb", extra={"job_id": "j1", "action": "resize"})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    line = out[0]
    assert line.split(" ")[0].endswith("Z")
    assert f" service=worker script=TestLog.py pid={os.getpid()} job=j1 action=resize level=WARNING " in line
    assert line.endswith('msg="done a\\x0ab"')


def test_each_process_writes_its_own_file():
    log.setup_logging("api")
    logging.getLogger("x").info("to the file")
    path = log.settings.logs_dir / f"api-{socket.gethostname()}-{os.getpid()}.log"
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert 'msg="to the file"' in path.read_text()


def test_the_text_format_is_the_default_and_unchanged(capsys, monkeypatch):
    assert type(log.settings).model_fields["log_format"].default == "text"
    monkeypatch.setattr(log, "settings", log.settings.model_copy(update={"log_format": "text"}))
    log.setup_logging("api")
    logging.getLogger("x").info('say "hi"', extra={"job_id": "j2", "action": "-", "client": "alice"})
    (line,) = capsys.readouterr().out.splitlines()
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-23T02:11:03.123Z")
    assert rest == f'service=api script=TestLog.py pid={os.getpid()} job=j2 action=- level=INFO msg="say \\"hi\\""'


# --- LOG_FORMAT=json ---------------------------------------------------------------------------------------

FIELDS = {"time", "service", "script", "pid", "job", "action", "level", "msg"}


@pytest.fixture
def json_logging(monkeypatch):
    """LOG_FORMAT=json for one test (which calls setup_logging); the root logger's handlers are put back after."""
    monkeypatch.setattr(log, "settings", log.settings.model_copy(update={"log_format": "json"}))
    root = logging.getLogger()
    saved = list(root.handlers)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved:
        root.addHandler(handler)


def json_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_json_line_parses_and_carries_every_field(json_logging, capsys):
    log.setup_logging("worker")
    logging.getLogger("x").warning("done %s", "ok", extra={"job_id": "j1", "action": "resize"})
    (line,) = json_lines(capsys)
    assert set(line) == FIELDS
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-11-23T02:11:03.123Z")
    assert {k: v for k, v in line.items() if k != "time"} == {
        "service": "worker",
        "script": "TestLog.py",
        "pid": os.getpid(),
        "job": "j1",
        "action": "resize",
        "level": "WARNING",
        "msg": "done ok",
    }


@pytest.mark.parametrize("hostile", ['a\nfake line" "level": "ERROR', "a\r\nb", "line\u2028sep\x85", "café 東京"])
def test_a_json_message_stays_one_line_and_round_trips(json_logging, capsys, hostile):
    log.setup_logging("worker")
    logging.getLogger("x").info(hostile)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and len(out.splitlines()) == 1
    line = json.loads(out)
    assert line["msg"] == hostile and line["level"] == "INFO"


def test_a_json_line_has_the_traceback_in_exc(json_logging, capsys):
    log.setup_logging("worker")
    try:
        raise ValueError("broken\ninput")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (line,) = json_lines(capsys)
    assert line["msg"] == "failed" and line["level"] == "ERROR"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].endswith("ValueError: broken\ninput")


def test_a_json_line_keeps_serialisable_extras_only(json_logging, capsys):
    log.setup_logging("worker")
    extra = {"client": "alice", "sizes": [1, 2], "obj": object(), "nan": float("nan"), "service": "forged"}
    logging.getLogger("x").info("with extras", extra=extra)
    (line,) = json_lines(capsys)
    assert set(line) == FIELDS | {"client", "sizes"}
    assert line["client"] == "alice" and line["sizes"] == [1, 2] and line["service"] == "worker"


def test_the_json_file_gets_the_same_lines(json_logging):
    log.setup_logging("worker")
    logging.getLogger("x").info("to the file")
    for handler in logging.getLogger().handlers:
        handler.flush()
    path = log.settings.logs_dir / f"worker-{socket.gethostname()}-{os.getpid()}.log"
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["msg"] == "to the file" and last["service"] == "worker"

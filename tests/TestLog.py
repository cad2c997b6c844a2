"""log.py: one line per event, with its fields, and user input that cannot forge a line."""

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

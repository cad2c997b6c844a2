"""gunicorn's own answers, in JSON.

gunicorn answers a request it cannot parse (a request line over 8190 bytes: 414; headers too many or
too long: 431; bad framing, a smuggling attempt: 400) before the app sees it, with an HTML page written
by gunicorn.util.write_error. The workers replace that one function (gunicorn.conf.py, post_fork), so
these answers are JSON {"error": "..."} like every other error of the service; the status and the
connection's close are gunicorn's, unchanged.
"""

import json

from gunicorn import util


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else f"{reason}."}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin1")
    util.write_nonblock(sock, head + body)


def install() -> None:
    util.write_error = write_json_error

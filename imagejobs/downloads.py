"""Reaching an http(s) URL for a job (downloading an image, calling back when a job ends) without letting
the URL reach into the network (SSRF).

The URL's host is resolved once; every address it resolves to must be public (or inside the
allowed networks), and the connection goes straight to one of those checked addresses, so a
second, different DNS answer (rebinding) is never used. Each redirect is resolved and checked the
same way before anything connects to it. Size and time are bounded while the body streams, and
the bytes must be an image Pillow reads before the file appears under its name.

Pure functions, as in Image.py: limits and allowed networks come in as arguments. Every problem
is raised as DownloadError, whose message is one sentence for the user that names at most the
URL's host, never a path.
"""

import contextlib
import functools
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

from urllib3 import HTTPConnectionPool, HTTPResponse, HTTPSConnectionPool, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError, SSLError

import Image
from imagejobs import paths


class DownloadError(Exception):
    """A URL that cannot be downloaded as an image. str(exc) is ONE sentence a user can act on.

    It names the URL's host at most, never a server path.
    """


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_MB = 1024 * 1024
_FALLBACK_NAME = "download"
# Cloud instance metadata services (AWS/GCP/Azure, AWS over IPv6, Alibaba): the classic SSRF
# prize, refused even inside the allowed networks.
_METADATA = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")))
_METADATA_KIND = "a cloud metadata address"
# fec0::/10: IPv6's deprecated site-local addresses, the private ones before fc00::/7.
_PRIVATE = tuple(map(ipaddress.ip_network, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10")))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # Linux connects 0.0.0.0 to the local host
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Checked in order: the first kind that matches names the address in the refusal.
_KINDS: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    (_METADATA_KIND, lambda ip: ip in _METADATA),
    ("an unspecified address", lambda ip: ip.is_unspecified or ip in _THIS_NETWORK),
    ("a loopback address", lambda ip: ip.is_loopback),
    ("a link-local address", lambda ip: ip.is_link_local),
    ("a multicast address", lambda ip: ip.is_multicast),
    ("a private address", lambda ip: any(ip in network for network in _PRIVATE)),
    ("a shared (carrier-grade NAT) address", lambda ip: ip in _SHARED),
    ("a reserved address", lambda ip: ip.is_reserved),
    # Whatever else IANA lists as not globally reachable: documentation, benchmarking, Teredo, ...
    ("a special-purpose address", lambda ip: not ip.is_global),
)


def parse_networks(text: str | None) -> tuple[IPNetwork, ...]:
    """ALLOWED_URL_NETWORKS: comma-separated CIDRs (e.g. "127.0.0.0/8,::1/128"); '' or None -> ().

    An invalid item (or one with host bits set, like 10.0.0.1/8) raises ValueError naming it.
    """
    networks = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(
                f"ALLOWED_URL_NETWORKS item {item!r} is not a network like 127.0.0.0/8 or ::1/128: {exc}."
            ) from None
    return tuple(networks)


def classify(ip: IPAddress) -> str | None:
    """The kind of non-public address ip is, e.g. "a loopback address", or None for a public one.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16)
    is judged by that IPv4 address alone: connecting reaches it or is relayed to it. (Python
    counts all of ::ffff:0:0/96 as private and 64:ff9b::/96 as reserved, which would refuse a
    public host reached over NAT64 too.)
    """
    judged = _carried_ipv4(ip) or ip
    return next((kind for kind, test in _KINDS if test(judged)), None)


def is_url(text: str) -> bool:
    """Whether an image's name is a URL to download rather than a path under the images root: the one
    definition the API and the workers share (a scheme is case-insensitive: HTTP:// is a URL too)."""
    return text[:8].lower().startswith(("http://", "https://"))


def validate_url(url: str) -> str:
    """Cheap syntax check for the API before enqueueing (no DNS): http/https, a host, no user:pass@,
    at most 2048 characters.

    Returns url; raises DownloadError.
    """
    _parse(url)
    return url


def check_destination(url: str, allowed_networks: tuple[IPNetwork, ...] = ()) -> str:
    """url, once its syntax is right and every address its host resolves to may be reached (one DNS lookup):
    what a URL the service will call later (a callback) must pass when it is given. DownloadError if not."""
    _resolve(_parse(url), tuple(allowed_networks))
    return url


def post(
    url: str,
    body: bytes,
    headers: dict,
    *,
    allowed_networks: tuple[IPNetwork, ...] = (),
    connect_timeout: float = 5,
    read_timeout: float = 10,
    total_timeout: float = 15,
) -> int:
    """POST body to url and return the answer's status, under the same rules as a download: the host resolved
    once, every address checked, the connection to that checked address, no redirect followed, the whole
    exchange bounded in time; at most 64 KB of the answer is read. DownloadError for a refusal or a network
    problem (a status of 400 or more is returned, not raised)."""
    limits = _Limits(64 * 1024, connect_timeout, read_timeout, 0, tuple(allowed_networks))
    target = _parse(url)
    with _Deadline(total_timeout) as deadline:
        address = _resolve(target, limits.allowed_networks)
        response = _request("POST", target, address, limits, deadline, body, headers)
        with contextlib.closing(response), _sentences(target.host, limits, deadline):
            response.read1(limits.max_bytes, decode_content=False)
            return response.status


def download(
    url: str,
    dest_folder: Path,
    *,
    max_bytes: int,
    max_pixels: int = Image.DEFAULT_MAX_PIXELS,
    connect_timeout: float = 5,
    read_timeout: float = 10,
    max_redirects: int = 3,
    allowed_networks: tuple[IPNetwork, ...] = (),
    total_timeout: float = 30,
) -> Path:
    """Download url into dest_folder (created if needed) and return the file's path. Raises DownloadError.

    The file is named after the URL's last path segment (percent-decoded, unicode kept, no
    separators; "download" if nothing is left; an image extension added if it has none) and
    written atomically (a hidden temporary file, os.replace()d once it reads as an image), so
    it replaces a file of the same name. read_timeout bounds each read, total_timeout the whole
    download (redirects, headers and body), max_bytes the body as sent (never decompressed).
    """
    limits = _Limits(max_bytes, connect_timeout, read_timeout, max_redirects, tuple(allowed_networks))
    first = _parse(url)
    with _Deadline(total_timeout) as deadline:
        target, response = _open(first, limits, deadline)
        with contextlib.closing(response):
            _check_response(target.host, response, max_bytes)
            write = functools.partial(_stream, response, host=target.host, limits=limits, deadline=deadline)
            return _save(Path(dest_folder), _file_name(url), max_pixels, write)


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    max_redirects: int
    allowed_networks: tuple[IPNetwork, ...]


class _Target(NamedTuple):
    """One hop's URL, split into what the request needs."""

    url: str
    scheme: str
    host: str  # as DNS, TLS and the Host header see it: IDNA for a unicode name, no [] around IPv6
    port: int
    path: str  # path and query, as in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _parse(url: str) -> _Target:
    if len(url) > MAX_URL_LENGTH:
        raise DownloadError(f"The URL is longer than {MAX_URL_LENGTH:,} characters.")
    if any(not char.isprintable() or char.isspace() for char in url):
        raise DownloadError("The URL contains spaces or control characters; percent-encode them.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DownloadError(f"The URL is malformed: {exc}.") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise DownloadError("Only http and https URLs are allowed.")
    if "@" in parts.netloc:
        raise DownloadError("The URL contains a user name or password (user:pass@host), which is not allowed.")
    if not parts.hostname:
        raise DownloadError("The URL has no host.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    port = _DEFAULT_PORTS[parts.scheme] if port is None else port
    return _Target(url, parts.scheme, _ascii_host(parts.hostname), port, path)


def _ascii_host(hostname: str) -> str:
    if ":" in hostname:  # an IPv6 literal
        return hostname
    try:
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise DownloadError("The URL's host is not a valid host name.") from None


def _resolve(target: _Target, allowed_networks: tuple[IPNetwork, ...]) -> str:
    """The address to connect to: the first of the host's addresses, once every one of them passed the check.

    This is the hop's only DNS lookup; the connection goes to the address itself.
    """
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DownloadError(f"The URL's host {target.host} could not be resolved ({exc.strerror}).") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        _check_address(target.host, ipaddress.ip_address(address), allowed_networks)
    return addresses[0]


def _check_address(host: str, ip: IPAddress, allowed_networks: tuple[IPNetwork, ...]) -> None:
    kind = classify(ip)
    if kind is None or (kind != _METADATA_KIND and _allowed(ip, allowed_networks)):
        return
    carried = _carried_ipv4(ip)
    shown = f"{ip} (carrying {carried})" if carried else str(ip)
    where = f"is {kind}" if _is_literal(host, ip) else f"resolves to {shown}, {kind}"
    rule = (
        "which is never allowed"
        if kind == _METADATA_KIND
        else "which is not allowed (set ALLOWED_URL_NETWORKS to allow it)"
    )
    raise DownloadError(f"The URL's host {host} {where}, {rule}.")


def _is_literal(host: str, ip: IPAddress) -> bool:
    """Whether the URL gave ip itself as its host (compared as addresses: ::ffff:127.0.0.1 prints as ::ffff:7f00:1)."""
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


def _allowed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether ip is inside one of networks; an IPv4-mapped address also by its IPv4 address, which it connects to."""
    addresses = (ip, ip.ipv4_mapped) if ip.version == 6 and ip.ipv4_mapped else (ip,)
    return any(address in network for network in networks for address in addresses)


def _carried_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address."""
    if ip.version == 4:
        return None
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return ip.ipv4_mapped or ip.sixtofour


class _Deadline:
    """The whole download's time limit, enforced by shutting its sockets down when it passes.

    A server that drips its headers or body a byte at a time never trips the per-read timeout,
    and urllib3 reads the headers inside urlopen(), out of our reach between reads: a timer
    thread shutting the socket down ends whatever read is in progress.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._watched: list[socket.socket] = []
        self._lock = threading.Lock()
        self._fired = False
        self._timer = threading.Timer(seconds, self._shut_down)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._watched:
                sock.close()

    @property
    def expired(self) -> bool:
        return self._fired or time.monotonic() >= self._end

    def left(self, host: str) -> float:
        """Seconds left, or the deadline's DownloadError if none are."""
        remaining = self._end - time.monotonic()
        if self._fired or remaining <= 0:
            raise self.error(host)
        return remaining

    def error(self, host: str) -> DownloadError:
        return DownloadError(
            f"The download from {host} took longer than the limit of {self.seconds:g} s (URL_TOTAL_TIMEOUT)."
        )

    def watch(self, sock: socket.socket) -> None:
        """Shut sock down when time is up (at once if it is already).

        A duplicate is kept, which shuts down the same connection; holding it also keeps the
        descriptor's number from being reused by an unrelated socket before then.
        """
        with self._lock:
            self._watched.append(sock.dup())
        if self.expired:
            self._shut_down()

    def _shut_down(self) -> None:
        with self._lock:
            self._fired = True
            for sock in self._watched:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _WatchedConnection:
    """An urllib3 connection that hands its socket to the download's _Deadline as soon as it connects,
    before any TLS.
    """

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        self._deadline = deadline
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


class _HTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def _open(target: _Target, limits: _Limits, deadline: _Deadline) -> tuple[_Target, HTTPResponse]:
    """The last hop's target and response (body unread), after at most limits.max_redirects redirects."""
    address = _resolve(target, limits.allowed_networks)
    for _ in range(limits.max_redirects + 1):
        response = _get(target, address, limits, deadline)
        location = response.headers.get("Location") if response.status in _REDIRECTS else None
        if location is None:
            return target, response
        response.close()
        target, address = _redirect(target, location, limits.allowed_networks)
    raise DownloadError(f"Too many redirects (more than {limits.max_redirects}).")


def _redirect(source: _Target, location: str, allowed_networks: tuple[IPNetwork, ...]) -> tuple[_Target, str]:
    """The target a redirect points to and its checked address, before anything connects to it."""
    try:
        target = _parse(urljoin(source.url, location))
        return target, _resolve(target, allowed_networks)
    except DownloadError as exc:
        raise DownloadError(f"The server at {source.host} redirected to another URL, and {_lower_first(exc)}") from None


def _get(target: _Target, address: str, limits: _Limits, deadline: _Deadline) -> HTTPResponse:
    return _request("GET", target, address, limits, deadline)


def _request(
    method: str, target: _Target, address: str, limits: _Limits, deadline: _Deadline, body=None, headers=None
) -> HTTPResponse:
    """method target at address, its checked IP; no redirect followed.

    For https, server_hostname keeps SNI and OpenSSL's certificate check on the host name, so
    connecting to the address itself weakens neither.
    """
    timeout = Timeout(connect=min(limits.connect_timeout, deadline.left(target.host)), read=limits.read_timeout)
    options = {"timeout": timeout, "retries": False, "deadline": deadline}
    if target.scheme == "https":
        pool = _HTTPSPool(address, target.port, server_hostname=target.host, **options)
    else:
        pool = _HTTPPool(address, target.port, **options)
    with _sentences(target.host, limits, deadline):
        return pool.urlopen(
            method,
            target.path,
            body=body,
            headers={**(headers or {}), "Host": target.host_header},
            redirect=False,
            preload_content=False,
            decode_content=False,
        )


def _check_response(host: str, response: HTTPResponse, max_bytes: int) -> None:
    """Refuse a final answer that is not 2xx, or whose Content-Length is already over max_bytes."""
    if not 200 <= response.status < 300:
        raise DownloadError(f"The server at {host} answered {_status_text(response.status)}.")
    announced = response.length_remaining
    if announced is not None and announced > max_bytes:
        raise DownloadError(
            f"The download from {host} is {announced:,} bytes, "
            f"more than the limit of {_size_text(max_bytes)} (MAX_DOWNLOAD_MB)."
        )


def _stream(response: HTTPResponse, file: BinaryIO, host: str, limits: _Limits, deadline: _Deadline) -> None:
    """Copy the body to file, reading at most one byte past max_bytes before giving up.

    read1() returns after one socket read, so each read is bounded by the read timeout; the
    deadline ends a body that keeps trickling in.
    """
    received = 0
    with _sentences(host, limits, deadline):
        while chunk := response.read1(min(_CHUNK, limits.max_bytes + 1 - received), decode_content=False):
            received += len(chunk)
            if received > limits.max_bytes:
                raise DownloadError(
                    f"The download from {host} is larger than the limit of "
                    f"{_size_text(limits.max_bytes)} (MAX_DOWNLOAD_MB)."
                )
            file.write(chunk)


@contextlib.contextmanager
def _sentences(host: str, limits: _Limits, deadline: _Deadline):
    """Turn urllib3's errors into DownloadError sentences.

    After the deadline, anything (even a body that simply stopped: its socket was shut down) is the deadline's error.
    """
    try:
        yield
    except HTTPError as exc:
        raise _network_error(exc, host, limits, deadline) from None
    if deadline.expired:
        raise deadline.error(host)


def _network_error(exc: HTTPError, host: str, limits: _Limits, deadline: _Deadline) -> DownloadError:
    if deadline.expired:
        return deadline.error(host)
    if isinstance(exc, ReadTimeoutError):
        return DownloadError(f"The server at {host} sent nothing for {limits.read_timeout:g} s (URL_READ_TIMEOUT).")
    if isinstance(exc, NewConnectionError):  # a subclass of ConnectTimeoutError, so first
        reason = getattr(exc.__cause__, "strerror", None)
        return DownloadError(f"The server at {host} could not be reached" + (f" ({reason})." if reason else "."))
    if isinstance(exc, ConnectTimeoutError):
        return DownloadError(
            f"The server at {host} did not answer within {limits.connect_timeout:g} s (URL_CONNECT_TIMEOUT)."
        )
    if isinstance(exc, SSLError):
        return DownloadError(f"The TLS connection to {host} failed ({_tls_reason(exc)}).")
    return DownloadError(f"The connection to {host} broke off before the download finished.")


def _tls_reason(exc: SSLError) -> str:
    """The certificate check's own words ("self-signed certificate", "Hostname mismatch, ..."),
    else OpenSSL's reason code.
    """
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc.__cause__
    reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or "handshake failed"
    return reason.rstrip(".")


def _save(folder: Path, name: str, max_pixels: int, write: Callable[[BinaryIO], None]) -> Path:
    """Let write() fill a hidden temporary file in folder, check that it is an image, then rename it to name.

    On any failure the temporary file is removed, and nothing appears under name.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            with open(temp, "xb") as file:
                write(file)
            image = Image.read_size(temp, max_pixels)
            dest = folder / _with_extension(name, image["format"])
            os.replace(temp, dest)
            return dest
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temp)
            raise
    except Image.ImageError as exc:
        raise DownloadError(f"The URL's content is not an image: {_lower_first(exc)}") from None
    except OSError as exc:  # strerror, not str(exc), which names the path
        raise DownloadError(f"The download could not be saved: {exc.strerror or type(exc).__name__}.") from None


def _file_name(url: str) -> str:
    """The URL path's last segment, percent-decoded, made safe as an upload's name is."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1], errors="replace")
    return paths.safe_file_name(segment, _FALLBACK_NAME)


def _with_extension(name: str, pillow_format: str) -> str:
    if os.path.splitext(name)[1].lower() in Image.IMAGE_EXTENSIONS:
        return name
    return name + Image.source_extension(pillow_format)


def _status_text(status: int) -> str:
    """The status with its standard phrase ("404 Not Found"), never the server's own, which could say anything."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _size_text(limit: int) -> str:
    return f"{limit // _MB} MB" if limit % _MB == 0 else f"{limit:,} bytes"


def _lower_first(exc: Exception) -> str:
    """exc's sentence to follow a colon or "and": "The file ..." becomes "the file ...", "URL ..." stays."""
    text = str(exc)
    return text[0].lower() + text[1:] if text[1:2].islower() else text

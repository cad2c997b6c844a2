"""Tests for downloads.py against local HTTP(S) servers in threads, on 127.0.0.1 (and ::1 if IPv6 loopback works).

No traffic leaves the machine. Two autouse guards hold every test to that: `connections` checks each
address urllib3 is about to connect to is a loopback one (and records it, so a refusal can show
that nothing connected), and `lookups` answers test names (*.test) itself and lets only numeric
hosts reach the real getaddrinfo, which parses them without DNS.
"""

import datetime
import ipaddress
import socket
import ssl
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import urllib3.util.connection

from imagejobs.downloads import DownloadError, classify, download, parse_networks, validate_url
from tests.support import JPEG, MB, LocalServer, ipv6_loopback_works, start_server

LOCAL = parse_networks("127.0.0.0/8,::1/128")
NOT_ALLOWED = "which is not allowed (set ALLOWED_URL_NETWORKS to allow it)."


# --- the guards ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def connections(monkeypatch) -> list[tuple[str, int]]:
    """Every (address, port) urllib3 connects to in the test; anything but loopback fails the test before connecting."""
    made = []
    real = urllib3.util.connection.create_connection

    def create_connection(address, *args, **kwargs):
        made.append(address)
        ip = ipaddress.ip_address(address[0])
        assert (ip.version == 6 and ip.ipv4_mapped or ip).is_loopback, f"the test tried to connect to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return made


class Lookups(NamedTuple):
    answers: dict[str, list[list[str]]]  # name: the addresses of each successive lookup ([]: no such name)
    names: list[str]  # every host asked for, in order


@pytest.fixture(autouse=True)
def lookups(monkeypatch) -> Lookups:
    """socket.getaddrinfo for the test: names come from lookups.answers, numeric hosts from the real one (no DNS)."""
    record = Lookups({}, [])
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        record.names.append(host)
        if host in record.answers:
            answer = record.answers[host].pop(0)
            if not answer:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [fake_addrinfo(address, port) for address in answer]
        assert is_numeric(host), f"the test tried to resolve {host!r} through DNS"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return record


def fake_addrinfo(address: str, port: int) -> tuple:
    if ":" in address:
        return socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0)
    return socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port)


def is_numeric(host: str) -> bool:
    """An address getaddrinfo parses without DNS, including inet_aton's forms (2130706433, 0x7f000001, 127.1)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


# --- helpers ---------------------------------------------------------------------------------


def refusal(call, *args, **kwargs) -> str:
    """The sentence of the DownloadError call raises, checked to be one sentence with no path in it."""
    with pytest.raises(DownloadError) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert message.endswith(".") and ". " not in message and "\n" not in message and "/" not in message, message
    return message


def fetch(url: str, folder: Path, **options) -> Path:
    options = {"max_bytes": 20 * MB, "allowed_networks": LOCAL, **options}
    return download(url, folder, **options)


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --- successful downloads --------------------------------------------------------------------


def test_downloads_the_image_over_ipv4_and_ipv6(any_server, tmp_path, connections):
    path = fetch(any_server.url("/img/castle.jpg"), tmp_path / "new" / "folder")
    assert path == tmp_path / "new" / "folder" / "castle.jpg"
    assert path.read_bytes() == JPEG
    assert files_in(path.parent) == ["castle.jpg"]  # no temporary file left behind
    assert connections == [(any_server.host, any_server.port)]
    assert any_server.requests == [("/img/castle.jpg", any_server.authority)]  # the path and the Host header


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/img/caf%C3%A9%20%E5%9F%8E%E5%A0%A1.jpg", "café 城堡.jpg"),  # unicode kept, percent-decoded
        ("/img/Ærøskøbing.jpeg", "Ærøskøbing.jpeg"),  # raw unicode in the URL
        ("/img/", "download.jpg"),  # nothing to name it after, so the fallback and the image's extension
        ("/img/noext", "noext.jpg"),  # the image's extension added
        ("/img/..%2F..%2Fetc%2Fpasswd", "passwd.jpg"),  # encoded separators split too
        ("/img/a%5Cb%5C.hidden.jpg", "hidden.jpg"),  # backslashes, and leading dots go
        ("/img/%E2%80%AEgpj.exe", "gpj.exe.jpg"),  # U+202E (display right-to-left) dropped
        ("/img/" + "%C3%A9" * 150 + ".jpg", "é" * 100 + ".jpg"),  # cut to 200 bytes of UTF-8, then extended
        ("/img/shot.jpg?size=large#top", "shot.jpg"),  # query and fragment ignored
    ],
)
def test_file_name_comes_from_the_url_path(server, tmp_path, path, name):
    assert fetch(server.url(path), tmp_path).name == name


def test_replaces_a_file_of_the_same_name(server, tmp_path):
    (tmp_path / "castle.jpg").write_bytes(b"old")
    assert fetch(server.url("/img/castle.jpg"), tmp_path).read_bytes() == JPEG


def test_follows_redirects_of_every_kind_up_to_the_limit(server, tmp_path):
    # /hop/5 answers 301, 302, 303, 307 and 308 in turn, relative Locations, then the image.
    assert fetch(server.url("/hop/5"), tmp_path, max_redirects=5).read_bytes() == JPEG
    assert [path for path, _ in server.requests] == ["/hop/5", "/hop/4", "/hop/3", "/hop/2", "/hop/1", "/hop/0"]


def test_max_pixels_applies(server, tmp_path):
    # Tried: the 800x480 castle with max_pixels=1000. Got: refused by Image.read_size's sentence, no file.
    message = refusal(fetch, server.url("/img/castle.jpg"), tmp_path, max_pixels=1000)
    assert message == (
        "The URL's content is not an image: the image has 384,000 pixels, "
        "more than the limit of 1,000 (MAX_IMAGE_PIXELS)."
    )
    assert files_in(tmp_path) == []


# --- DNS: resolved once, every address checked -----------------------------------------------


@pytest.mark.parametrize(
    ("family", "first", "second"),
    [
        ("ipv4", "127.0.0.1", "169.254.169.254"),
        ("ipv6", "::1", "127.0.0.1"),  # ::1 is allowed here, 127.0.0.1 is not
    ],
)
def test_dns_is_pinned_to_the_checked_address(request, tmp_path, lookups, connections, family, first, second):
    server = request.getfixturevalue("server4" if family == "ipv4" else "server6")
    server.requests.clear()
    # A rebinding name: the first answer is allowed, a second one would point somewhere else.
    lookups.answers["rebind.test"] = [[first], [second]]
    allowed = parse_networks("127.0.0.0/8" if family == "ipv4" else "::1/128")
    path = fetch(server.url("/img/castle.jpg", host="rebind.test"), tmp_path, allowed_networks=allowed)
    assert path.read_bytes() == JPEG
    assert lookups.names.count("rebind.test") == 1
    assert connections == [(first, server.port)]
    assert server.requests == [("/img/castle.jpg", f"rebind.test:{server.port}")]


def test_unicode_host_is_looked_up_and_sent_as_idna(server, tmp_path, lookups):
    lookups.answers["xn--bcher-kva.test"] = [["127.0.0.1"]]
    assert fetch(server.url("/img/castle.jpg", host="bücher.test"), tmp_path).read_bytes() == JPEG
    assert lookups.names[0] == "xn--bcher-kva.test"
    assert server.requests == [("/img/castle.jpg", f"xn--bcher-kva.test:{server.port}")]


def test_every_resolved_address_is_checked(server, tmp_path, lookups, connections):
    # Tried: a name resolving to 127.0.0.1 (allowed) and 10.0.0.1. Got: refused for 10.0.0.1, no connection.
    lookups.answers["mixed.test"] = [["127.0.0.1", "10.0.0.1"]]
    message = refusal(fetch, server.url("/img/castle.jpg", host="mixed.test"), tmp_path)
    assert message == f"The URL's host mixed.test resolves to 10.0.0.1, a private address, {NOT_ALLOWED}"
    assert connections == []


def test_unknown_host_is_a_sentence(tmp_path, lookups, connections):
    # Tried: a name that does not resolve. Got: a sentence with the resolver's reason.
    lookups.answers["nowhere.test"] = [[]]
    message = refusal(fetch, "http://nowhere.test/a.jpg", tmp_path)
    assert message == "The URL's host nowhere.test could not be resolved (Name or service not known)."
    assert connections == []


# --- address classes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("fec0::1", "a private address"),  # deprecated IPv6 site-local
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "an unspecified address"),  # "this network", 0.0.0.0/8
        ("::", "an unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped: judged by the IPv4 address
        ("::ffff:10.0.0.1", "a private address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64 of 169.254.169.254
        ("2002:a00:1::1", "a private address"),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "a special-purpose address"),  # Teredo
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.1", "a special-purpose address"),  # documentation
        ("2001:db8::1", "a special-purpose address"),
    ],
)
def test_classify_names_each_kind_of_non_public_address(address, kind):
    assert classify(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_classify_passes_public_addresses(address):
    assert classify(ipaddress.ip_address(address)) is None


# Tried: a numeric URL for each kind of address, with no network allowed. Got: the sentence
# beside it, before any connection (the autouse guard would also fail the test had one been tried).
@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("http://10.0.0.1/x.jpg", f"The URL's host 10.0.0.1 is a private address, {NOT_ALLOWED}"),
        ("http://172.16.5.4/x.jpg", f"The URL's host 172.16.5.4 is a private address, {NOT_ALLOWED}"),
        ("http://192.168.1.1:8080/x.jpg", f"The URL's host 192.168.1.1 is a private address, {NOT_ALLOWED}"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "The URL's host 169.254.169.254 is a cloud metadata address, which is never allowed.",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/",
            "The URL's host fd00:ec2::254 is a cloud metadata address, which is never allowed.",
        ),
        (
            "http://100.100.100.200/latest/meta-data/",
            "The URL's host 100.100.100.200 is a cloud metadata address, which is never allowed.",
        ),
        ("http://[fe80::1]/x.jpg", f"The URL's host fe80::1 is a link-local address, {NOT_ALLOWED}"),
        ("http://[ff02::1]/x.jpg", f"The URL's host ff02::1 is a multicast address, {NOT_ALLOWED}"),
        ("http://0.0.0.0/x.jpg", f"The URL's host 0.0.0.0 is an unspecified address, {NOT_ALLOWED}"),
        ("http://[::]/x.jpg", f"The URL's host :: is an unspecified address, {NOT_ALLOWED}"),
        ("http://127.0.0.1/x.jpg", f"The URL's host 127.0.0.1 is a loopback address, {NOT_ALLOWED}"),
        ("http://[::1]/x.jpg", f"The URL's host ::1 is a loopback address, {NOT_ALLOWED}"),
        ("http://[::ffff:127.0.0.1]/x.jpg", f"The URL's host ::ffff:127.0.0.1 is a loopback address, {NOT_ALLOWED}"),
        ("http://[::ffff:10.0.0.1]/x.jpg", f"The URL's host ::ffff:10.0.0.1 is a private address, {NOT_ALLOWED}"),
        (
            "http://100.64.0.1/x.jpg",
            f"The URL's host 100.64.0.1 is a shared (carrier-grade NAT) address, {NOT_ALLOWED}",
        ),
        ("http://[64:ff9b::7f00:1]/x.jpg", f"The URL's host 64:ff9b::7f00:1 is a loopback address, {NOT_ALLOWED}"),
        # Numeric forms getaddrinfo turns into 127.0.0.1: caught after resolution.
        (
            "http://2130706433/x.jpg",
            f"The URL's host 2130706433 resolves to 127.0.0.1, a loopback address, {NOT_ALLOWED}",
        ),
        (
            "http://0x7f000001/x.jpg",
            f"The URL's host 0x7f000001 resolves to 127.0.0.1, a loopback address, {NOT_ALLOWED}",
        ),
        ("http://127.1/x.jpg", f"The URL's host 127.1 resolves to 127.0.0.1, a loopback address, {NOT_ALLOWED}"),
        (
            "http://017700000001/x.jpg",
            f"The URL's host 017700000001 resolves to 127.0.0.1, a loopback address, {NOT_ALLOWED}",
        ),
    ],
)
def test_non_public_addresses_are_refused_before_connecting(tmp_path, connections, url, sentence):
    assert refusal(download, url, tmp_path, max_bytes=MB) == sentence
    assert connections == []
    assert files_in(tmp_path) == []


def test_refusal_shows_the_ipv4_address_a_name_carries(tmp_path, lookups, connections):
    # Tried: a name resolving to NAT64 64:ff9b::a00:1. Got: refused, naming the 10.0.0.1 inside it.
    lookups.answers["nat64.test"] = [["64:ff9b::a00:1"]]
    message = refusal(download, "http://nat64.test/x.jpg", tmp_path, max_bytes=MB)
    assert (
        message
        == f"The URL's host nat64.test resolves to 64:ff9b::a00:1 (carrying 10.0.0.1), a private address, {NOT_ALLOWED}"
    )
    assert connections == []


def test_local_server_is_refused_unless_allowed(any_server, tmp_path, connections):
    # Tried: the working local server with allowed_networks=(). Got: refused as loopback, nothing sent.
    message = refusal(download, any_server.url("/img/castle.jpg"), tmp_path, max_bytes=MB)
    assert message == f"The URL's host {any_server.host} is a loopback address, {NOT_ALLOWED}"
    assert connections == [] and any_server.requests == []


def test_metadata_is_refused_even_inside_the_allowed_networks(tmp_path, connections):
    # Tried: 169.254.169.254 with every address allowed. Got: still refused.
    everything = parse_networks("0.0.0.0/0,::/0")
    message = refusal(
        download, "http://169.254.169.254/latest/meta-data/", tmp_path, max_bytes=MB, allowed_networks=everything
    )
    assert message == "The URL's host 169.254.169.254 is a cloud metadata address, which is never allowed."
    assert connections == []


def test_allowed_networks_cover_ipv4_mapped_addresses(server, tmp_path, lookups, connections):
    # ::ffff:127.0.0.1 connects to 127.0.0.1, so 127.0.0.0/8 allows it.
    if not ipv6_loopback_works():
        pytest.skip("IPv6 sockets are not available here")
    lookups.answers["mapped.test"] = [["::ffff:127.0.0.1"]]
    path = fetch(
        server.url("/img/castle.jpg", host="mapped.test"), tmp_path, allowed_networks=parse_networks("127.0.0.0/8")
    )
    assert path.read_bytes() == JPEG
    assert connections == [("::ffff:127.0.0.1", server.port)]


# --- redirects -------------------------------------------------------------------------------


def test_redirect_to_metadata_is_refused_before_connecting(server, tmp_path, connections):
    # Tried: an allowed server redirecting to http://169.254.169.254/latest/meta-data/.
    # Got: refused; only the first hop connected.
    message = refusal(fetch, server.url("/redirect?http://169.254.169.254/latest/meta-data/"), tmp_path)
    assert message == (
        "The server at 127.0.0.1 redirected to another URL, "
        "and the URL's host 169.254.169.254 is a cloud metadata address, "
        "which is never allowed."
    )
    assert connections == [("127.0.0.1", server.port)]


def test_redirect_to_ipv4_loopback_is_refused_when_only_ipv6_loopback_is_allowed(
    server4, server6, tmp_path, connections
):
    # Tried: [::1] (allowed) redirecting to http://127.0.0.1:<port>/ (not allowed). Got: refused; only [::1] connected.
    server4.requests.clear()
    url = server6.url(f"/redirect?http://127.0.0.1:{server4.port}/img/castle.jpg")
    message = refusal(download, url, tmp_path, max_bytes=MB, allowed_networks=parse_networks("::1/128"))
    assert message == (
        "The server at ::1 redirected to another URL, "
        f"and the URL's host 127.0.0.1 is a loopback address, {NOT_ALLOWED}"
    )
    assert connections == [("::1", server6.port)] and server4.requests == []


def test_redirect_to_another_loopback_address_is_refused(server, tmp_path, connections):
    # Tried: 127.0.0.1 (allowed alone) redirecting to http://127.0.0.2:<port>/. Got: refused; 127.0.0.2 never connected.
    url = server.url(f"/redirect?http://127.0.0.2:{server.port}/img/castle.jpg")
    message = refusal(fetch, url, tmp_path, allowed_networks=parse_networks("127.0.0.1/32"))
    assert message == (
        "The server at 127.0.0.1 redirected to another URL, "
        f"and the URL's host 127.0.0.2 is a loopback address, {NOT_ALLOWED}"
    )
    assert connections == [("127.0.0.1", server.port)]


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO"])
def test_redirect_to_another_scheme_is_refused(server, tmp_path, connections, location):
    # Tried: a redirect to ftp:, file: or gopher:. Got: refused before following it.
    message = refusal(fetch, server.url(f"/redirect?{location}"), tmp_path)
    assert message == "The server at 127.0.0.1 redirected to another URL, and only http and https URLs are allowed."
    assert connections == [("127.0.0.1", server.port)]


def test_too_many_redirects(server, tmp_path):
    # Tried: 4 redirects with max_redirects=3. Got: refused after the 4th answer, without a 5th request.
    assert refusal(fetch, server.url("/hop/4"), tmp_path, max_redirects=3) == "Too many redirects (more than 3)."
    assert len(server.requests) == 4


def test_no_redirects_allowed(server, tmp_path):
    # Tried: one redirect with max_redirects=0. Got: refused.
    assert refusal(fetch, server.url("/hop/1"), tmp_path, max_redirects=0) == "Too many redirects (more than 0)."


# --- URL syntax ------------------------------------------------------------------------------


# Tried: each malformed or forbidden URL. Got: the sentence beside it, from validate_url and
# from download() alike, with no lookup and no connection.
@pytest.mark.parametrize(
    ("url", "sentence"),
    [
        ("ftp://127.0.0.1/x.jpg", "Only http and https URLs are allowed."),
        ("file:///etc/passwd", "Only http and https URLs are allowed."),
        ("javascript:alert(1)", "Only http and https URLs are allowed."),
        ("//127.0.0.1/x.jpg", "Only http and https URLs are allowed."),
        (
            "http://user:secret@127.0.0.1/x.jpg",
            "The URL contains a user name or password (user:pass@host), which is not allowed.",
        ),
        (
            "http://user@127.0.0.1/x.jpg",
            "The URL contains a user name or password (user:pass@host), which is not allowed.",
        ),
        (
            "http://good.test\\@127.0.0.1/x.jpg",
            "The URL contains a user name or password (user:pass@host), which is not allowed.",
        ),
        ("http:///x.jpg", "The URL has no host."),
        ("http://127.0.0.1:99999/x.jpg", "The URL is malformed: Port out of range 0-65535."),
        ("http://[::1/x.jpg", "The URL is malformed: Invalid IPv6 URL."),
        ("http://a..b/x.jpg", "The URL's host is not a valid host name."),
        ("http://127.0.0.1/a b.jpg", "The URL contains spaces or control characters; percent-encode them."),
        (
            "http://127.0.0.1/a.jpg\r\nX-Injected: 1",
            "The URL contains spaces or control characters; percent-encode them.",
        ),
        ("http://127.0.0.1/" + "a" * 2040, "The URL is longer than 2,048 characters."),
    ],
)
def test_bad_urls_are_refused_without_lookup_or_connection(tmp_path, lookups, connections, url, sentence):
    assert refusal(validate_url, url) == sentence
    assert refusal(download, url, tmp_path, max_bytes=MB, allowed_networks=LOCAL) == sentence
    assert lookups.names == [] and connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.jpg",
        "https://images.example.test:8443/a/b.png?x=1",
        "HTTP://Example.TEST/x",
        "http://[::1]:8080/x.jpg",
        "https://bücher.example/ü.jpg",
        "http://127.0.0.1/" + "a" * 2031,
    ],
)
def test_validate_url_returns_good_urls_unchanged(url, lookups):
    assert validate_url(url) == url
    assert lookups.names == []  # no DNS in validate_url


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["img", "chunked"])
def test_max_bytes_exactly_the_size_passes(server, tmp_path, route):
    assert fetch(server.url(f"/{route}/castle.jpg"), tmp_path, max_bytes=len(JPEG)).read_bytes() == JPEG


def test_max_bytes_one_short_refused_from_content_length(server, tmp_path):
    # Tried: a JPEG whose honest Content-Length is one byte over max_bytes. Got: refused before reading the body.
    message = refusal(fetch, server.url("/img/castle.jpg"), tmp_path, max_bytes=len(JPEG) - 1)
    assert message == (
        f"The download from 127.0.0.1 is {len(JPEG):,} bytes, "
        f"more than the limit of {len(JPEG) - 1:,} bytes (MAX_DOWNLOAD_MB)."
    )
    assert files_in(tmp_path) == []


def test_max_bytes_one_short_refused_while_streaming(server, tmp_path):
    # Tried: the same JPEG chunked (no Content-Length), one byte over. Got: refused once the count passed the limit.
    message = refusal(fetch, server.url("/chunked/castle.jpg"), tmp_path, max_bytes=len(JPEG) - 1)
    assert (
        message == f"The download from 127.0.0.1 is larger than the limit of {len(JPEG) - 1:,} bytes (MAX_DOWNLOAD_MB)."
    )
    assert files_in(tmp_path) == []


def test_oversize_content_length_refused_early(server, tmp_path):
    # Tried: an honest Content-Length of 10 MB against a 1 MB limit. Got: refused at the headers.
    message = refusal(fetch, server.url("/big"), tmp_path, max_bytes=MB)
    assert message == "The download from 127.0.0.1 is 10,485,760 bytes, more than the limit of 1 MB (MAX_DOWNLOAD_MB)."
    assert files_in(tmp_path) == []


def test_endless_chunked_body_is_cut_off(server, tmp_path):
    # Tried: a chunked body of up to 1 GB against a 1 MB limit. Got: refused after about 1 MB.
    started = time.monotonic()
    message = refusal(fetch, server.url("/endless"), tmp_path, max_bytes=MB)
    assert message == "The download from 127.0.0.1 is larger than the limit of 1 MB (MAX_DOWNLOAD_MB)."
    assert time.monotonic() - started < 5
    time.sleep(0.2)  # the server's writes fail soon after the client hangs up
    assert server.httpd.endless_sent < 100 * MB  # only what fits into the socket buffers beyond the 1 MB read
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("route", ["drip", "drip-headers"])
def test_slow_drip_fails_at_the_total_deadline(server, tmp_path, route):
    # Tried: a server sending a byte every 50 ms (body, or the headers themselves): no single read
    # waits 0.5 s. Got: stopped at the 2 s deadline.
    started = time.monotonic()
    message = refusal(fetch, server.url(f"/{route}"), tmp_path, read_timeout=0.5, total_timeout=2)
    elapsed = time.monotonic() - started
    assert message == "The download from 127.0.0.1 took longer than the limit of 2 s (URL_TOTAL_TIMEOUT)."
    assert 1.9 < elapsed < 2.5
    assert files_in(tmp_path) == []


def test_silent_server_fails_at_the_read_timeout(server, tmp_path):
    # Tried: a server that sends its headers and then nothing. Got: the read timeout, long before the deadline.
    started = time.monotonic()
    message = refusal(fetch, server.url("/stall"), tmp_path, read_timeout=0.5, total_timeout=10)
    assert message == "The server at 127.0.0.1 sent nothing for 0.5 s (URL_READ_TIMEOUT)."
    assert time.monotonic() - started < 1.5


def test_connect_timeout(tmp_path):
    # Tried: a local port whose listen backlog is full, so the SYN goes unanswered. Got: the connect timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        waiting = [socket.socket() for _ in range(4)]
        try:
            for client in waiting:
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", port))
            time.sleep(0.1)
            started = time.monotonic()
            message = refusal(fetch, f"http://127.0.0.1:{port}/x.jpg", tmp_path, connect_timeout=0.3)
        finally:
            for client in waiting:
                client.close()
    assert message == "The server at 127.0.0.1 did not answer within 0.3 s (URL_CONNECT_TIMEOUT)."
    assert time.monotonic() - started < 1


def test_connection_refused(tmp_path):
    # Tried: a local port nobody listens on. Got: the operating system's reason.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    message = refusal(fetch, f"http://127.0.0.1:{port}/x.jpg", tmp_path)
    assert message == "The server at 127.0.0.1 could not be reached (Connection refused)."


def test_body_cut_short(server, tmp_path):
    # Tried: a server promising 100,000 bytes that hangs up after 10. Got: refused, no file.
    assert (
        refusal(fetch, server.url("/short"), tmp_path)
        == "The connection to 127.0.0.1 broke off before the download finished."
    )
    assert files_in(tmp_path) == []


# --- answers that are not an image -----------------------------------------------------------


def test_not_found(server, tmp_path):
    # Tried: a path the server does not have. Got: the status with its standard phrase.
    assert (
        refusal(fetch, server.url("/nothing/here.jpg"), tmp_path) == "The server at 127.0.0.1 answered 404 Not Found."
    )
    assert files_in(tmp_path) == []


def test_text_is_not_an_image_and_leaves_no_file(server, tmp_path):
    # Tried: a text file. Got: Image.read_size's sentence, and the folder is empty again.
    message = refusal(fetch, server.url("/notes.txt"), tmp_path)
    assert message == (
        "The URL's content is not an image: "
        "the file is not an image Pillow can read (JPEG, PNG, WebP, AVIF, HEIC, JPEG XL, GIF, BMP or TIFF)."
    )
    assert files_in(tmp_path) == []


# --- https: the certificate is checked for the host name, the connection goes to the pinned address


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A CA, and an HTTPS server on 127.0.0.1 whose certificate (from that CA) is for img.test only.

    Yields (server, CA file, server names the server was asked for over SNI).
    """
    pytest.importorskip("cryptography")
    folder = tmp_path_factory.mktemp("tls")
    ca_file, cert_file, key_file = make_certificates(folder, "img.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    for server in start_server(LocalServer, "127.0.0.1", tls=context):
        yield server, ca_file, names


def make_certificates(folder: Path, name: str) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject, issuer, public_key, signing_key, is_ca, extensions=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TestDownloads CA")])
    ca = certificate(
        ca_name,
        ca_name,
        ca_key.public_key(),
        ca_key,
        True,
        [
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
        ],
    )
    leaf = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        ca_name,
        key.public_key(),
        ca_key,
        False,
        [
            x509.SubjectAlternativeName([x509.DNSName(name)]),
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
        ],
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_https_verifies_the_host_name_on_the_pinned_address(tls, tmp_path, lookups, connections, monkeypatch):
    server, ca_file, names = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # OpenSSL's default trust store, for this test only
    names.clear()
    lookups.answers["img.test"] = [["127.0.0.1"], ["10.0.0.1"]]
    path = fetch(server.url("/img/castle.jpg", host="img.test"), tmp_path)
    assert path.read_bytes() == JPEG
    assert names == ["img.test"]  # SNI named the host, though the socket went to the address
    assert connections == [("127.0.0.1", server.port)] and lookups.names.count("img.test") == 1


def test_https_certificate_for_another_name_is_refused(tls, tmp_path, lookups, monkeypatch):
    # Tried: other.test resolving to the server whose certificate is for img.test. Got: refused by the TLS check.
    server, ca_file, _ = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    lookups.answers["other.test"] = [["127.0.0.1"]]
    message = refusal(fetch, server.url("/img/castle.jpg", host="other.test"), tmp_path)
    assert (
        message
        == "The TLS connection to other.test failed (Hostname mismatch, certificate is not valid for 'other.test')."
    )


def test_https_untrusted_certificate_is_refused(tls, tmp_path, lookups):
    # Tried: the right name, without trusting the test CA. Got: refused by the TLS check.
    server, _, _ = tls
    lookups.answers["img.test"] = [["127.0.0.1"]]
    message = refusal(fetch, server.url("/img/castle.jpg", host="img.test"), tmp_path)
    assert message.startswith("The TLS connection to img.test failed (")


# --- settings --------------------------------------------------------------------------------


def test_parse_networks():
    assert parse_networks(None) == parse_networks("") == parse_networks(" , ") == ()
    assert parse_networks("127.0.0.0/8, ::1/128,10.1.2.3") == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.1.2.3/32"),
    )


@pytest.mark.parametrize("text", ["127.0.0.0/8,localhost", "10.0.0.1/8", "::1/129"])
def test_parse_networks_names_the_bad_item(text):
    bad = text.split(",")[-1]
    with pytest.raises(ValueError, match=f"item '{bad}' is not a network"):
        parse_networks(text)

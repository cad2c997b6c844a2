"""imageUrl through the whole service: the API checks the syntax, a worker downloads each URL safely."""

import hashlib

import pytest

from RedisConfig import queue
from tests.support import result_of, submit

# The suite's workers run with ALLOWED_URL_NETWORKS=127.0.0.0/8 (conftest): the tests' servers are on
# loopback; every other private range stays refused. TestDownloads tests each refusal with it unset.


def test_one_url_is_downloaded_and_thumbnailed(client, server, images_root):
    body = submit(client, "POST", data={"imageUrl": server.url("/img/castle.jpg"), "width": "80"})
    result = result_of(client, body["jobId"])["result"]
    # each URL downloads into a folder of its own under the job's: downloads/<jobId>/<URL's folder>/castle.jpg
    url_folder = hashlib.sha256(server.url("/img/castle.jpg").encode()).hexdigest()[:16]
    assert result["path"] == f"resized/downloads/{body['jobId']}/{url_folder}/castle_resized.jpg"
    assert (result["width"], result["height"]) == (80, 48)
    assert (images_root / "downloads" / body["jobId"] / url_folder / "castle.jpg").is_file()


def test_urls_whose_files_share_a_name_never_overwrite_each_other(client, server, images_root):
    """Tried: two URLs of one batch whose files have the same name (a.jpg). Before: both downloaded to
    downloads/<jobId>/a.jpg, the second over the first. Now: two files, and two thumbnails."""
    urls = [server.url("/img/a.jpg"), server.url("/img/other/a.jpg")]
    body = submit(client, "POST", json={"imageUrl": urls, "action": "resize"})
    entries = result_of(client, body["jobId"])["result"]["images"]
    assert [entry["image"] for entry in entries] == urls and all("result" in entry for entry in entries)
    assert len({entry["result"]["path"] for entry in entries}) == 2
    downloaded = sorted((images_root / "downloads" / body["jobId"]).glob("*/*"))
    assert len(downloaded) == 2, downloaded


@pytest.mark.parametrize("how", ["json", "form"])
def test_several_urls_make_one_batch_with_per_url_errors(client, server, how):
    urls = [
        server.url("/img/a.jpg"),
        server.url("/missing/b.jpg"),
        server.url("/notes.txt"),
        "http://10.0.0.1/private.jpg",
        "http://169.254.169.254/latest/meta-data/",
    ]
    values = {"action": "size", "imageUrl": urls}
    body = submit(
        client,
        "POST",
        **(
            {"json": values} if how == "json" else {"data": {"action": "size", "imageUrl": str(urls).replace("'", '"')}}
        ),
    )
    entries = result_of(client, body["jobId"])["result"]["images"]
    assert [entry["image"] for entry in entries] == urls
    assert entries[0]["result"]["format"] == "JPEG"
    assert "answered 404 Not Found" in entries[1]["error"]
    assert "not an image" in entries[2]["error"]
    assert "10.0.0.1 is a private address, which is not allowed" in entries[3]["error"]
    assert "cloud metadata address, which is never allowed" in entries[4]["error"]
    assert not any(path.startswith(("/private", "/latest")) for path, _ in server.requests)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"imageUrl": "ftp://example.test/a.jpg"}, "Only http and https URLs are allowed."),
        ({"imageUrl": "http://user:secret@example.test/a.jpg"}, "user name or password"),
        ({"imageUrl": '["http://a.test/1.jpg", '}, "not valid JSON"),
        ({"imageUrl": "http://a.test/x.jpg", "imagePath": "x.jpg"}, "one way"),
        ({"imageUrl": str([f"http://a.test/{n}.jpg" for n in range(101)]).replace("'", '"')}, "MAX_URLS"),
    ],
)
def test_bad_urls_are_refused_before_anything_is_queued(client, values, message):
    before = queue("images").count
    answer = client.post("/imageapi", data=values)
    # e.g. ftp://example.test/a.jpg -> 400 "Invalid parameter imageUrl: Only http and https URLs are allowed."
    assert answer.status_code == 400 and message in answer.get_json()["error"]
    assert queue("images").count == before

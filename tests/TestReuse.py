"""Work already done is not done again: a folder submitted again reuses each unchanged image's result,
with real workers and Redis."""

import os

from PIL import Image as PILImage

from imagejobs import reuse
from RedisConfig import connection
from tests.support import copy_sample, rel, result_of, submit


def colour_bmp(path, colour: str) -> None:
    """A BMP: the same size in bytes whatever its colour, so a change of content keeps the size."""
    PILImage.new("RGB", (64, 48), colour).save(path, "BMP")


def run(client, folder, images_root, **extra) -> list[dict]:
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "width": "32", **extra})
    return result_of(client, body["jobId"])["result"]["images"]


def test_a_folder_submitted_again_reuses_every_unchanged_image(client, folder, images_root):
    for index in range(4):
        copy_sample("castle_image.jpg", folder / f"p{index}.jpg")
    first = run(client, folder, images_root)
    assert [entry["reused"] for entry in first] == [False] * 4
    made = {entry["image"]: os.stat(images_root / entry["result"]["path"]).st_mtime_ns for entry in first}
    second = run(client, folder, images_root)
    assert [entry["reused"] for entry in second] == [True] * 4
    assert [entry["result"] for entry in second] == [entry["result"] for entry in first]
    assert {e["image"]: os.stat(images_root / e["result"]["path"]).st_mtime_ns for e in second} == made  # not rewritten


def test_a_changed_image_of_the_same_name_and_size_is_redone(client, folder, images_root):
    colour_bmp(folder / "a.bmp", "red")
    colour_bmp(folder / "b.bmp", "green")
    run(client, folder, images_root)
    size = os.path.getsize(folder / "a.bmp")
    colour_bmp(folder / "a.bmp", "blue")  # new content, same name, same size
    assert os.path.getsize(folder / "a.bmp") == size
    again = {entry["image"].rsplit("/", 1)[1]: entry for entry in run(client, folder, images_root)}
    assert again["a.bmp"]["reused"] is False and again["b.bmp"]["reused"] is True
    with PILImage.open(images_root / again["a.bmp"]["result"]["path"]) as thumb:
        assert thumb.convert("RGB").getpixel((5, 5))[2] > 200  # the thumbnail is blue now


def test_an_image_touched_but_unchanged_is_reused_by_its_content(client, folder, images_root):
    colour_bmp(folder / "a.bmp", "red")
    run(client, folder, images_root)
    os.utime(folder / "a.bmp", (1_000_000_000, 1_000_000_000))  # other times, the same bytes: the hash decides
    assert run(client, folder, images_root)[0]["reused"] is True


def test_a_record_hashed_by_an_earlier_release_is_never_matched(tmp_path):
    """Content hashes are BLAKE3 now, "blake3:" and the hex; releases before recorded SHA-256's bare hex. Tried:
    a record of an image whose times changed, its digest the SHA-256 of the very same bytes. Got: not valid (the
    image is made again, once); with the digest this release takes, valid."""
    import hashlib

    image = tmp_path / "a.bmp"
    colour_bmp(image, "red")
    record = {"source": [os.path.getsize(image), 1, 1, 1], "result": {"width": 64}}
    assert reuse.digest(image).startswith("blake3:")
    record["digest"] = hashlib.sha256(image.read_bytes()).hexdigest()
    assert not reuse.still_valid(dict(record), tmp_path, "a.bmp", {})
    record["digest"] = reuse.digest(image)
    assert reuse.still_valid(dict(record), tmp_path, "a.bmp", {})


def test_a_deleted_thumbnail_is_made_again(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    copy_sample("jemma.png", folder / "b.png")
    first = run(client, folder, images_root)
    (images_root / first[0]["result"]["path"]).unlink()
    again = run(client, folder, images_root)
    assert [entry["reused"] for entry in again] == [False, True]
    assert (images_root / again[0]["result"]["path"]).is_file()


def test_force_redoes_everything(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    copy_sample("jemma.png", folder / "b.png")
    run(client, folder, images_root)
    assert [entry["reused"] for entry in run(client, folder, images_root, force="true")] == [False, False]
    assert [entry["reused"] for entry in run(client, folder, images_root)] == [True, True]


def test_other_parameters_or_another_action_do_not_reuse(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    run(client, folder, images_root)
    assert run(client, folder, images_root, height="20")[0]["reused"] is False  # other parameters
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "action": "size", "recursive": "true"})
    assert result_of(client, body["jobId"])["result"]["images"][0]["reused"] is False  # another action


def test_a_single_image_submitted_again_says_it_was_reused(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "a.jpg")
    query = {"imagePath": rel(folder / "a.jpg", images_root)}
    first = result_of(client, submit(client, "POST", data=query)["jobId"])
    second = result_of(client, submit(client, "POST", data=query)["jobId"])
    assert "reused" not in first and second["reused"] is True and second["result"] == first["result"]


def test_another_clients_earlier_work_is_never_reused(configured, folder, images_root):
    client = configured(api_tokens="alice:a-token,bob:b-token")
    alice, bob = {"Authorization": "Bearer a-token"}, {"Authorization": "Bearer b-token"}
    copy_sample("castle_image.jpg", folder / "a.jpg")
    copy_sample("jemma.png", folder / "b.png")
    data = {"imagePath": rel(folder, images_root), "width": "32"}
    # alice's results are hers: bob's first run redoes the images (and so rewrites the thumbnails, which
    # alice's records then no longer match); bob's second run reuses his own.
    for headers, reused in ((alice, False), (bob, False), (bob, True)):
        body = submit(client, "POST", data=data, headers=headers)
        answer = client.get(f"/result/{body['jobId']}?wait=20", headers=headers).get_json()
        assert [entry["reused"] for entry in answer["result"]["images"]] == [reused] * 2, headers


def test_what_is_remembered_is_bounded_least_recently_used_first():
    redis = connection()
    client = "bounded-test"
    redis.delete(*reuse._keys(client))
    for number in range(5):
        reuse.remember(redis, client, 3, {f"entry-{number}": {"n": number}})
    assert sorted(redis.hkeys(reuse._keys(client)[0])) == [b"entry-2", b"entry-3", b"entry-4"]
    assert redis.zcard(reuse._keys(client)[1]) == 3


def test_an_image_replaced_while_it_is_worked_is_not_remembered_with_the_old_result(folder, images_root):
    """Tried: the size action on a 64x48 BMP that is replaced by a 200x100 one after the processor read it
    and before its result is remembered. Came back: nothing remembered for it, so the next run measures
    the new file (before: the new file's identity was remembered with the old size, and reused)."""
    from dataclasses import replace

    from imagejobs.actions import ACTIONS
    from imagejobs.config import settings
    from imagejobs.processors import Work

    colour_bmp(folder / "a.bmp", "red")
    image = rel(folder / "a.bmp", images_root)
    size = ACTIONS["size"]

    def replaced_meanwhile(work):
        for entry in size.process(work):
            PILImage.new("RGB", (200, 100), "blue").save(folder / "a.bmp", "BMP")
            yield entry

    def run_size(action):
        work = Work(images=[image], params={}, named=image, job_id="replaced", settings=settings, redis=connection())
        return list(reuse.entries(action, work))

    (first,) = run_size(replace(size, process=replaced_meanwhile))
    assert first["result"]["width"] == 64 and first["reused"] is False
    (second,) = run_size(size)
    assert second["reused"] is False and second["result"]["width"] == 200
    (third,) = run_size(size)
    assert third["reused"] is True and third["result"]["width"] == 200


def test_a_thumbnail_folder_moved_out_behind_a_link_is_not_reused(client, folder, images_root, tmp_path):
    """Tried: a folder's thumbnails made, then their folder under resized/ moved out of the root and a link
    to it put in its place (the files, their inodes and times unchanged). Came back: not reused, and the
    new thumbnail refused with a sentence, as the folder leads out (before: "reused": true, for a file
    /result/file then refused to serve)."""
    copy_sample("castle_image.jpg", folder / "a.jpg")
    first = run(client, folder, images_root)
    made_folder = (images_root / first[0]["result"]["path"]).parent
    outside = tmp_path / "moved-out"
    made_folder.rename(outside)
    made_folder.symlink_to(outside)
    try:
        (again,) = run(client, folder, images_root)
        assert again["reused"] is False and "outside the images root" in again["error"], again
    finally:
        made_folder.unlink()

"""The duplicates action: perceptual hashes of a folder's images, grouped, with real workers and Redis."""

import io
import random

import numpy as np
import pytest
import skimage.data
from PIL import Image as PILImage

from imagejobs.processors.duplicates import group
from tests.support import ROOT, rel, result_of, submit

TESTDATA = ROOT / "testdata"


def copies_among_unrelated(folder) -> list[set[str]]:
    """Copies of two photos among unrelated ones, in folder; the groups they should make, by file name."""
    with PILImage.open(TESTDATA / "castle_image.jpg") as castle:
        castle = castle.convert("RGB")
    castle.save(folder / "castle.jpg", quality=92)
    castle.resize((266, 160)).save(folder / "castle-small.png")
    castle.save(folder / "castle-q40.webp", quality=40)
    width, height = castle.size
    castle.crop((width // 20, height // 20, width - width // 20, height - height // 20)).save(
        folder / "castle-crop.jpg"
    )
    with PILImage.open(TESTDATA / "jemma.png") as jemma:
        jemma.convert("RGB").save(folder / "jemma.jpg")
        jemma.convert("RGB").resize((187, 250)).save(folder / "jemma-small.avif")
    with PILImage.open(TESTDATA / "CogentLabs.jpg") as alone:
        alone.save(folder / "cogent.jpg")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        PILImage.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.jpg")
    (folder / "notes.jpg").write_text("not a picture")
    return [{"castle.jpg", "castle-small.png", "castle-q40.webp", "castle-crop.jpg"}, {"jemma.jpg", "jemma-small.avif"}]


def names_of(groups: list[dict]) -> list[set[str]]:
    return [{member["image"].rsplit("/", 1)[-1] for member in found["images"]} for found in groups]


def test_a_folder_of_copies_among_unrelated_photos_gives_exactly_their_groups(client, folder, images_root):
    """Tried: the castle photo, a third of its size as PNG, re-encoded as WebP at quality 40 and cropped 5% a
    side; the beagle photo and a half-size AVIF of it; five unrelated photos; a text file named .jpg. One
    duplicates request. Got: exactly two groups, the castle's four and the beagle's two, each member with its
    distance from the group's first (the crop's the largest, under the default 10 bits); every image's entry
    carries its 16-digit hash, the text file its error and no group."""
    expected = copies_among_unrelated(folder)
    body = submit(client, "POST", data={"imagePath": rel(folder, images_root), "action": "duplicates"})
    done = result_of(client, body["jobId"])
    result = done["result"]
    assert done["status"] == "finished" and (result["total"], result["done"], result["failed"]) == (12, 11, 1)
    assert names_of(result["groups"]) == expected
    found_hashes = [entry for entry in result["images"] if "result" in entry]
    hashes = {entry["image"].rsplit("/", 1)[-1]: int(entry["result"]["hash"], 16) for entry in found_hashes}
    for found in result["groups"]:  # distances from the group's first member in the batch's (alphabetical) order
        first = hashes[found["images"][0]["image"].rsplit("/", 1)[-1]]
        for member in found["images"]:
            assert member["distance"] == (hashes[member["image"].rsplit("/", 1)[-1]] ^ first).bit_count() <= 10
    assert (hashes["castle.jpg"] ^ hashes["castle-small.png"]).bit_count() <= 2
    assert 0 < (hashes["castle.jpg"] ^ hashes["castle-crop.jpg"]).bit_count() <= 10
    for entry in result["images"]:
        if entry["image"].endswith("notes.jpg"):
            assert "not an image" in entry["error"]
        else:
            assert len(entry["result"]["hash"]) == 16 and int(entry["result"]["hash"], 16) >= 0


def test_a_re_run_reuses_the_hashes_whatever_the_distance(client, folder, images_root):
    """Tried: the same folder again, then at distance 0. Got: every hash reused (the distance is not part of
    what a hash is remembered by); at 0 only hashes exactly equal group (the castle and its resized copy,
    whose pHash did not move), the cropped copy is alone."""
    copies_among_unrelated(folder)
    first = result_of(
        client, submit(client, "POST", data={"imagePath": rel(folder, images_root), "action": "duplicates"})["jobId"]
    )
    again = submit(client, "POST", data={"imagePath": rel(folder, images_root), "action": "duplicates"})
    again = result_of(client, again["jobId"])["result"]
    assert all(entry["reused"] for entry in again["images"] if "result" in entry)
    assert again["groups"] == first["result"]["groups"]
    exact = submit(
        client, "POST", data={"imagePath": rel(folder, images_root), "action": "duplicates", "distance": "0"}
    )
    exact = result_of(client, exact["jobId"])["result"]
    assert all(entry["reused"] for entry in exact["images"] if "result" in entry)
    assert all(member["distance"] == 0 for found in exact["groups"] for member in found["images"])
    assert not any("castle-crop.jpg" in names for names in names_of(exact["groups"]))


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"distance": "17"}, "distance"),
        ({"distance": "-1"}, "distance"),
        ({"distance": "ten"}, "distance"),
    ],
)
def test_bad_distances_are_refused(client, folder, images_root, data, said):
    (folder / "a.jpg").write_bytes((TESTDATA / "castle_image.jpg").read_bytes())
    (folder / "b.jpg").write_bytes((TESTDATA / "jemma.png").read_bytes())
    answer = client.post("/imageapi", data={"imagePath": rel(folder, images_root), "action": "duplicates", **data})
    assert answer.status_code == 400 and said in answer.get_json()["error"]


def test_one_image_is_refused_with_a_sentence(client, folder, images_root):
    (folder / "a.jpg").write_bytes((TESTDATA / "castle_image.jpg").read_bytes())
    answer = client.post("/imageapi", data={"imagePath": rel(folder / "a.jpg", images_root), "action": "duplicates"})
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "duplicates compares images: name a folder, or upload two or more files."
    upload = client.post(
        "/imageapi",
        data={"action": "duplicates", "image": (io.BytesIO((TESTDATA / "jemma.png").read_bytes()), "a.png")},
        content_type="multipart/form-data",
    )
    assert upload.status_code == 400


@pytest.mark.parametrize("distance", [0, 1, 5, 10, 16])
def test_grouping_finds_what_comparing_every_pair_finds(distance):
    """The multi-index grouping against every pair compared, on 600 random hashes and 200 copies of some of
    them with 0-12 bits flipped (chains of copies included): the same groups at every distance."""
    rng = random.Random(distance)
    hashes = {index: rng.getrandbits(64) for index in range(600)}
    for index in range(600, 800):
        value = hashes[rng.randrange(index)]
        for bit in rng.sample(range(64), rng.randint(0, 12)):
            value ^= 1 << bit
        hashes[index] = value
    parent = list(range(800))

    def root(key):
        while parent[key] != key:
            key = parent[key]
        return key

    values = np.array(list(hashes.values()), dtype=np.uint64)
    for first in range(800):
        for second in np.flatnonzero(np.bitwise_count(values[first] ^ values) <= distance):
            parent[root(int(second))] = root(first)
    every_pair = {}
    for key in range(800):
        every_pair.setdefault(root(key), []).append(key)
    expected = sorted((keys for keys in every_pair.values() if len(keys) > 1), key=lambda keys: (-len(keys), keys[0]))
    assert group(hashes, distance) == expected


def test_many_equal_or_near_hashes_group_in_bounded_memory():
    """Every plain, one-colour image has the same pHash (8000000000000000), so a folder of blank scans is
    thousands of equal hashes. Tried: 6,000 equal hashes, and 3,000 others each within 4 bits of one hash.
    Before, every pair was listed for each block before grouping: 5,000 equal hashes took 2.6 GB. Got: two
    groups of 6,000 and 3,000, with numpy's allocations peaking under 200 MB (equal hashes are one value,
    and pairs are folded into the groups a million at a time)."""
    import tracemalloc

    rng = random.Random(4)
    base = rng.getrandbits(64)
    hashes = {key: 0x8000000000000000 for key in range(6_000)}
    for key in range(6_000, 9_000):
        hashes[key] = base ^ sum(1 << bit for bit in rng.sample(range(64), rng.randint(0, 4)))
    tracemalloc.start()
    try:
        found = group(hashes, 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(keys) for keys in found] == [6_000, 3_000]
    assert found[0] == list(range(6_000)) and found[1] == list(range(6_000, 9_000))
    assert peak < 200 * 1024 * 1024, f"{peak / 2**20:.0f} MB"

"""duplicates: each image's perceptual hash; its batch's result groups the images whose hashes differ by at
most `distance` bits (resized, re-encoded or lightly cropped copies, burst shots).

The hashes are per-image entries like any action's (a batch's progress, cancel and reuse: a hash is remembered
with its image's identity, whatever the distance asked). The groups come once every entry is in (summarize):
only hashes equal in one of distance + 1 blocks are compared (multi-index hashing, see group), instead of
every pair, and the pairs found within the distance are joined into groups.
"""

import Image
from imagejobs.processors import Work, each_image


def process(work: Work):
    settings = work.settings
    yield from each_image(
        work,
        lambda path: {
            "hash": Image.perceptual_hash(path, settings.max_image_pixels, max_decode_bytes=settings.max_decode_bytes)
        },
    )


def summarize(entries: list[dict], params: dict) -> dict:
    """{"groups": [...]}: each group of two or more images, largest first, each member with its distance in
    bits from the group's first (in the batch's order); the entries that failed take no part."""
    hashes = {index: int(entry["result"]["hash"], 16) for index, entry in enumerate(entries) if "result" in entry}
    groups = group(hashes, params.get("distance", DEFAULT_DISTANCE))
    return {
        "groups": [
            {
                "images": [
                    {"image": entries[index]["image"], "distance": (hashes[index] ^ hashes[members[0]]).bit_count()}
                    for index in members
                ]
            }
            for members in groups
        ]
    }


DEFAULT_DISTANCE = 10
HASH_BITS = 64


def group(hashes: dict[int, int], distance: int) -> list[list[int]]:
    """The groups (lists of keys, each in key order; the largest group first) of hashes linked by a chain of
    pairs at most distance bits apart.

    Multi-index hashing: the 64 bits are cut into distance + 1 blocks, and two hashes at most distance bits
    apart are equal in at least one block (there are more blocks than differing bits). So only hashes that
    share a block's value are compared (bench/crops_and_duplicates.py gives the time against comparing every
    pair), each comparison a vectorised XOR and bit count.
    """
    import numpy as np  # numpy and scipy here: the API imports this module for the actions table, and needs neither
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keys = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
    values = np.fromiter(hashes.values(), dtype=np.uint64, count=len(hashes))
    near = [np.empty(0, dtype=np.int64)] * 2
    bounds = np.linspace(0, HASH_BITS, min(distance, HASH_BITS - 1) + 2).astype(int).tolist()
    for low, high in zip(bounds[:-1], bounds[1:]):
        block = (values >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)  # the mask in Python: 1 << 64 fits
        first, second = _sharing(block)
        close = np.bitwise_count(values[first] ^ values[second]) <= distance
        near = [np.concatenate((near[0], first[close])), np.concatenate((near[1], second[close]))]
    graph = coo_matrix((np.ones(len(near[0]), dtype=np.int8), tuple(near)), shape=(len(keys), len(keys)))
    _, labels = connected_components(graph, directed=False)
    members = [sorted(keys[labels == label].tolist()) for label in np.flatnonzero(np.bincount(labels) > 1)]
    return sorted(members, key=lambda group_keys: (-len(group_keys), group_keys[0]))


def _sharing(block):
    """(first, second): the positions (numpy arrays) of every pair of hashes whose block values are equal."""
    import numpy as np

    order = np.argsort(block, kind="stable")
    firsts, seconds = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
    for run in np.split(order, np.flatnonzero(np.diff(block[order])) + 1):
        if len(run) > 1:
            i, j = np.triu_indices(len(run), 1)
            firsts.append(run[i])
            seconds.append(run[j])
    return np.concatenate(firsts), np.concatenate(seconds)

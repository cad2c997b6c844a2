"""duplicates: each image's perceptual hash; its batch's result groups the images whose hashes differ by at
most `distance` bits (resized, re-encoded or lightly cropped copies, burst shots).

The hashes are per-image entries like any action's (a batch's progress, cancel and reuse: a hash is remembered
with its image's identity, whatever the distance asked). The groups come once every entry is in (summarize):
only hashes near in one of four blocks are compared (multi-index hashing, see group), instead of every pair,
and the pairs found within the distance are joined into groups.
"""

import functools
from itertools import combinations

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
# Multi-index hashing's blocks: 4 of 16 bits. Each block's values index the hashes (65,536 of them: a folder's
# hashes spread thin, a handful a value), and a probe is one value near a hash's own block.
BLOCKS, BLOCK_BITS = 4, 16


def group(hashes: dict[int, int], distance: int) -> list[list[int]]:
    """The groups (lists of keys, each in key order; the largest group first) of hashes linked by a chain of
    pairs at most distance bits apart.

    Multi-index hashing (Norouzi et al.): two hashes at most distance bits apart differ in at least one of the 4
    blocks by at most distance // 4 bits (else they would differ by more). So each hash is compared only with
    the hashes whose block value is within that many bits of its own, in some block: with the default 10 bits,
    137 probes a block find about 8 candidates of 10,000 unrelated hashes, instead of all 10,000
    (bench/crops_and_duplicates.py gives the time against comparing every pair). Equal hashes are one value
    (every plain, one-colour image has the same pHash: a folder of blank scans would otherwise pair each with
    each), and the pairs found are folded into the groups as they come (_linked), so memory stays bounded.
    """
    import numpy as np  # numpy and scipy here: the API imports this module for the actions table, and needs neither

    keys = np.fromiter(hashes, dtype=np.int64, count=len(hashes))
    values = np.fromiter(hashes.values(), dtype=np.uint64, count=len(hashes))
    distinct, which = np.unique(values, return_inverse=True)
    labels = _linked(distinct, distance)[which]
    members = [sorted(keys[labels == label].tolist()) for label in np.flatnonzero(np.bincount(labels) > 1)]
    return sorted(members, key=lambda group_keys: (-len(group_keys), group_keys[0]))


# Pairs held at once: candidates are made, and pairs within the distance folded into the groups, this many at a
# time (tens of MB), however many of a folder's images are near each other.
_PAIRS = 1_000_000


def _linked(values, distance):
    """For each of values (distinct hashes), a representative (the position of one of its group), equal for the
    values linked by a chain of pairs at most distance bits apart."""
    import numpy as np

    representative = np.arange(len(values))
    pending, held = [], 0
    for block in range(BLOCKS):
        for first, second in _candidates(values, block, distance // BLOCKS):
            close = np.bitwise_count(values[first] ^ values[second]) <= distance
            pending.append((first[close], second[close]))
            held += int(close.sum())
            if held > _PAIRS:
                representative, pending, held = _fold(representative, pending), [], 0
    return _fold(representative, pending)


def _fold(representative, pairs):
    """The representatives once pairs (a list of (first, second) position arrays) join their groups: the
    groups so far (each value linked to its representative) and the new pairs, as connected components."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(representative)
    first = np.concatenate([np.arange(count), *(pair[0] for pair in pairs)])
    second = np.concatenate([representative, *(pair[1] for pair in pairs)])
    graph = coo_matrix((np.ones(len(first), dtype=np.int8), (first, second)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    first_of = np.empty(labels.max() + 1 if count else 0, dtype=np.int64)
    first_of[labels[::-1]] = np.arange(count)[::-1]  # each group's first position
    return first_of[labels]


# Hashes probed at once: a chunk's probes are arrays of this many times 137 (radius 2).
_CHUNK = 4096


def _candidates(values, block, radius):
    """(first, second) numpy arrays of positions, at most about _PAIRS at a time: every pair (first < second) of
    hashes whose values in this block differ by at most radius bits. Each hash's block value, flipped by every
    mask of at most radius bits (a probe), is looked up among all the hashes' values, sorted, where each
    value's run starts; _CHUNK hashes at a time, in one pass of numpy each."""
    import numpy as np

    own = ((values >> np.uint64(block * BLOCK_BITS)) & np.uint64((1 << BLOCK_BITS) - 1)).astype(np.uint16)
    order = np.argsort(own, kind="stable")
    counts = np.bincount(own, minlength=1 << BLOCK_BITS)
    starts = np.cumsum(counts) - counts
    masks = np.array(_masks(radius), dtype=np.uint16)
    for low in range(0, len(own), _CHUNK):
        probes = (own[low : low + _CHUNK, None] ^ masks).ravel()
        hits = np.flatnonzero(counts[probes])  # most probes find no hash: only the others are expanded
        ends = np.cumsum(counts[probes[hits]])
        cuts = np.searchsorted(ends, np.arange(_PAIRS, ends[-1], _PAIRS)) if len(ends) else []
        for part in np.split(hits, cuts):  # each part's probes find about _PAIRS hashes in all
            found = counts[probes[part]]
            first = np.repeat(low + part // len(masks), found)
            within = np.arange(len(first)) - np.repeat(np.cumsum(found) - found, found)
            second = order[np.repeat(starts[probes[part]], found) + within]
            keep = first < second
            yield first[keep], second[keep]


@functools.cache
def _masks(radius):
    """Every BLOCK_BITS-bit mask of at most radius bits set (1 + 16 + 120 for radius 2)."""
    return [
        sum(1 << bit for bit in bits) for count in range(radius + 1) for bits in combinations(range(BLOCK_BITS), count)
    ]

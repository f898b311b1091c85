"""Near-duplicates: bottom-k MinHash over byte 8-grams, vectorised with numpy.

`near_duplicates(texts, threshold)` finds the texts at least `threshold` similar (estimated Jaccard over byte
8-grams) to an earlier one, as the audit's `near_duplicate` flag does; `near_copies(queries, corpus, threshold)` does
the same test between two sets (eval items against training rows, `trainer audit FILE --against OTHER`). Candidates
are counted with numpy posting arrays and one `bincount` per text, so the cost stays close to linear (BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any, Sequence

SKETCH_SIZE = 64
"""Sketch values per text: the estimate's error shrinks with it, its cost grows with it."""


def sketch(text: str, k: int = SKETCH_SIZE):
    """The k smallest distinct hashes among the 4k smallest hashes of the text's byte 8-grams (sorted)."""
    import numpy as np

    data = text.lower().encode("utf-8").ljust(8, b"\0")
    # Every 8-byte window read as one little-endian integer, without copying: a view with a stride of one byte.
    grams = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    mixed = grams * np.uint64(0x9E3779B97F4A7C15)
    mixed ^= grams >> np.uint64(29)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    keep = 4 * k
    if mixed.size > keep:  # only the smallest values matter: avoid sorting them all
        # The hashes are spread evenly over 64 bits, so a cut that about 1.5 * keep of them fall below usually
        # holds the `keep` smallest; partitioning those few is much cheaper than partitioning them all.
        low = mixed[mixed < np.uint64(min(2**64 - 1, int(2**64 * 1.5 * keep / mixed.size)))]
        mixed = low if low.size >= keep else mixed
        if mixed.size > keep:
            mixed = np.partition(mixed, keep)[:keep]
    return np.unique(mixed)[:k]


def _dense_ids(sketches: Sequence[Any], k: int) -> tuple[Any, Any, int]:
    """Sketch values as dense ids in value order, one row of `k` per text padded with a sentinel that sorts after
    every id: (ids, each row's size, sentinel)."""
    import numpy as np

    values, inverse = np.unique(np.concatenate(sketches), return_inverse=True)
    sentinel = values.size
    sizes = np.array([s.size for s in sketches])
    ids = np.full((len(sketches), k), sentinel, dtype=np.int64)
    ids[np.arange(k) < sizes[:, None]] = inverse.ravel()
    return ids, sizes, sentinel


def near_duplicates(texts: Sequence[str], threshold: float, k: int = SKETCH_SIZE) -> dict[int, tuple[int, float]]:
    """Index -> (earlier index, estimated Jaccard) for conversations at least `threshold` similar to an earlier one.

    Each conversation is compared with the earlier ones that are not near-duplicates themselves (the index). The
    candidates are those sharing at least `threshold * k / 2` sketch values; the five sharing most are estimated
    (ties: the one sharing the smallest value first, then the earlier one) and the most similar wins."""
    return near_duplicates_of_sketches([sketch(t, k) for t in texts], threshold, k)


def near_duplicates_of_sketches(sketches: Sequence[Any], threshold: float, k: int) -> dict[int, tuple[int, float]]:
    """`near_duplicates` on the texts' sketches (`sketch(text, k)`)."""
    import numpy as np

    if not sketches:
        return {}
    ids, sizes, sentinel = _dense_ids(sketches, k)
    rows = [r[:n].tolist() for r, n in zip(ids, sizes.tolist())]
    # Posting lists (texts in the index holding each id), numpy arrays grown by doubling, so counting the
    # candidates of one text is a concatenate and a bincount, not a Python loop over every posting.
    postings: list[Any] = [None] * sentinel
    lengths = [0] * sentinel
    need = max(threshold * k * 0.5, 1)
    found: dict[int, tuple[int, float]] = {}
    for i, row in enumerate(rows):
        parts = [postings[v][:lengths[v]] for v in row if lengths[v]]
        best = None
        if parts:
            counts = np.bincount(np.concatenate(parts))
            candidates = np.flatnonzero(counts >= need)
            if candidates.size:
                best = _best_candidate(ids, i, candidates, counts[candidates], threshold, k, sentinel)
        if best is not None:
            found[i] = best
            continue
        for v in row:
            posting, n = postings[v], lengths[v]
            if posting is None:
                posting = postings[v] = np.empty(4, dtype=np.int64)
            elif n == posting.size:
                posting = postings[v] = np.concatenate([posting, np.empty(n, dtype=np.int64)])
            posting[n] = i
            lengths[v] = n + 1
    return found


def near_copies(queries: Sequence[str], corpus: Sequence[str], threshold: float, k: int = SKETCH_SIZE
                ) -> dict[int, tuple[int, float]]:
    """Query index -> (corpus index, estimated Jaccard) for each query at least `threshold` similar to a corpus
    text: the near-duplicate test of `near_duplicates`, between two sets (eval items against training rows)."""
    import numpy as np

    sketches = [sketch(t, k) for t in corpus] + [sketch(t, k) for t in queries]
    if not queries or not corpus:
        return {}
    ids, sizes, sentinel = _dense_ids(sketches, k)
    postings: dict[int, list[int]] = {}
    for j in range(len(corpus)):
        for v in ids[j, :sizes[j]].tolist():
            postings.setdefault(v, []).append(j)
    posting_arrays = {v: np.asarray(js, dtype=np.int64) for v, js in postings.items()}
    need = max(threshold * k * 0.5, 1)
    found: dict[int, tuple[int, float]] = {}
    for q in range(len(queries)):
        i = len(corpus) + q
        parts = [posting_arrays[v] for v in ids[i, :sizes[i]].tolist() if v in posting_arrays]
        if not parts:
            continue
        counts = np.bincount(np.concatenate(parts))
        # a short query has a small sketch: it can share at most its own size
        candidates = np.flatnonzero(counts >= min(need, max(1.0, sizes[i] * threshold * 0.5)))
        if candidates.size:
            best = _best_candidate(ids, i, candidates, counts[candidates], threshold, k, sentinel)
            if best is not None:
                found[q] = best
    return found


def _best_candidate(ids, i: int, candidates, shared, threshold: float, k: int,
                    sentinel: int) -> tuple[int, float] | None:
    """(j, estimate) for the most similar of the five candidates sharing most sketch values with text i, or None.

    `ids` holds every text's sketch as sorted value ids padded with `sentinel`; `shared` the candidates' counts."""
    import numpy as np

    if candidates.size > 5:  # only those sharing at least as many values as the fifth can be among the five
        keep = shared >= np.partition(shared, shared.size - 5)[shared.size - 5]
        candidates, shared = candidates[keep], shared[keep]
    mine = ids[i]
    top = candidates
    if candidates.size > 1:
        # Order: most shared values first, then the one whose smallest shared value is smallest, then the earlier.
        theirs = ids[candidates]
        at = np.minimum(np.searchsorted(mine, theirs), k - 1)
        first = np.where((mine[at] == theirs) & (theirs != sentinel), theirs, sentinel).min(axis=1)
        top = candidates[np.lexsort((candidates, first, -shared))[:5]]
    # Estimated Jaccard: values both sketches share among the k smallest of their union, over that union's size.
    merged = np.concatenate([np.broadcast_to(mine, (top.size, k)), ids[top]], axis=1)
    merged.sort(axis=1)
    valid = merged < sentinel
    distinct = valid.copy()
    distinct[:, 1:] &= merged[:, 1:] != merged[:, :-1]
    rank = np.cumsum(distinct, axis=1)
    both = valid[:, 1:] & ~distinct[:, 1:] & (rank[:, 1:] <= k)
    estimates = both.sum(axis=1) / np.minimum(k, rank[:, -1])
    best = None
    for j, estimate in zip(top.tolist(), estimates.tolist()):
        if estimate >= threshold and (best is None or estimate > best[1]):
            best = (j, round(estimate, 3))
    return best

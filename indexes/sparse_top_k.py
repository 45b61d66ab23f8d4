"""Exact BM25 top-k with MaxScore pruning, in numba over term-major postings.

Why: scoring every posting of every query term is linear in the postings touched, and a query of
common words touches a large share of a million-chunk segment (tens of milliseconds, the p99 tail).
MaxScore (Turtle & Flood 1995) keeps the result exact while skipping most of that work: each term's
contribution has an upper bound (its best score over its postings); terms are taken in order of
falling bound, and once the bounds of the terms not yet read add up to less than the k-th best
partial score so far, no chunk those terms alone could reach can enter the top k. From then on
only the chunks already in play are scored on the remaining terms (a binary search per chunk in the
sorted postings, or a walk of the postings, whichever is cheaper), and a chunk is dropped as soon
as its partial score plus the bounds still to come falls below the k-th best.

The result equals exhaustive scoring (same rows, same scores up to the order of float additions).
Scratch arrays come from a small pool per segment size and are cleaned row by row after each query,
so a query never zeroes (or page-faults in) arrays the size of the segment.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np

_KEEP_PER_SIZE = 4  # idle scratch sets kept per segment size: about the number of concurrent queries
_KEEP_SIZES = 16  # segment sizes kept at once (segments come and go with merges)
_pool: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
_pool_lock = threading.Lock()


@contextmanager
def scratch(rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Clean (scores, seen, touched) arrays for one query on a segment of `rows` chunks, from a small
    shared pool: a query takes a set, the kernel leaves it clean, and it goes back for the next one.
    Why a pool and not one set per thread: a server's thread pool has dozens of threads, and 17 bytes
    per chunk each (17 MB at 1M chunks) would stay allocated for every thread that ever searched.
    A query that fails does not return its set (it may not be clean)."""
    with _pool_lock:
        free = _pool.get(rows)
        found = free.pop() if free else None
    if found is None:
        found = (np.zeros(rows, dtype=np.float64), np.zeros(rows, dtype=np.uint8), np.empty(rows, dtype=np.int64))
    yield found
    with _pool_lock:
        if rows not in _pool and len(_pool) >= _KEEP_SIZES:
            _pool.clear()
        free = _pool.setdefault(rows, [])
        if len(free) < _KEEP_PER_SIZE:
            free.append(found)


@numba.njit(cache=True, nogil=True)
def _saturation(f, dl, k1, b, avgdl):
    """BM25's term-frequency factor f (k1 + 1) / (f + k1 (1 - b + b dl / avgdl)): the one formula
    every kernel here scores with (times the term's query weight)."""
    return f * (k1 + 1.0) / (f + k1 * (1.0 - b + b * dl / avgdl))


@numba.njit(cache=True, nogil=True)
def term_bounds(indptr, indices, tf, doc_len, k1, b, avgdl):
    """Per term, the largest BM25 saturation factor f (k1 + 1) / (f + norm(dl)) over its postings
    (multiply by the query weight for the term's upper bound)."""
    n_terms = indptr.shape[0] - 1
    out = np.zeros(n_terms, dtype=np.float64)
    for t in range(n_terms):
        best = 0.0
        for p in range(indptr[t], indptr[t + 1]):
            value = _saturation(tf[p], doc_len[indices[p]], k1, b, avgdl)
            if value > best:
                best = value
        out[t] = best
    return out


@numba.njit(cache=True, nogil=True)
def pruned_top_k(indptr, indices, tf, doc_len, mask, term_ids, weights, bounds, k1, b, avgdl, k,
                 scores, seen, touched):
    """Best `k` rows; terms must come in order of falling `bounds` (weight x saturation bound).
    `scores`, `seen` must be clean (all zero) and are left clean; `touched` is scratch."""
    n_terms = term_ids.shape[0]
    after = np.zeros(n_terms + 1, dtype=np.float64)  # after[i]: sum of bounds of terms i..end
    unread = np.zeros(n_terms + 1, dtype=np.int64)  # unread[i]: postings of terms i..end
    for i in range(n_terms - 1, -1, -1):
        after[i] = after[i + 1] + bounds[i]
        unread[i] = unread[i + 1] + indptr[term_ids[i] + 1] - indptr[term_ids[i]]
    use_mask = mask.shape[0] > 0
    n_touched = 0
    theta = -1.0
    read = 0
    while read < n_terms:  # phase 1: whole postings, while new rows can still reach the top k
        tid = term_ids[read]
        w = weights[read]
        for p in range(indptr[tid], indptr[tid + 1]):
            row = indices[p]
            if use_mask and mask[row] == 0:
                continue
            f = tf[p]
            scores[row] += w * _saturation(f, doc_len[row], k1, b, avgdl)
            if seen[row] == 0:
                seen[row] = 1
                touched[n_touched] = row
                n_touched += 1
        read += 1
        # the k-th best cannot exceed the bounds read so far, and finding it costs a pass over the
        # rows in play: only look when it could stop the reading and the reading left costs more
        if read < n_terms and n_touched >= k and after[read] < after[0] - after[read] \
                and n_touched < unread[read]:
            theta = _kth_score(touched[:n_touched], scores, k)
            if after[read] < theta:
                break
    candidates = touched[:n_touched]
    if read < n_terms:  # phase 2: only rows already in play, and only while they can still make it
        candidates = np.sort(_alive(candidates, scores, after[read], theta))
        for j in range(read, n_terms):
            _add_term(indptr, indices, tf, doc_len, term_ids[j], weights[j], k1, b, avgdl, candidates, scores)
            if candidates.shape[0] > k:
                theta = max(theta, _kth_score(candidates, scores, k))
                candidates = _alive(candidates, scores, after[j + 1], theta)
    best_rows, best_scores = _heap_top_k(candidates, scores, k)
    for i in range(n_touched):  # leave the scratch clean for the next query
        row = touched[i]
        scores[row] = 0.0
        seen[row] = 0
    return best_rows, best_scores


@numba.njit(cache=True, nogil=True)
def _alive(candidates, scores, still_to_come, theta):
    """Rows whose partial score plus the bounds still to come can reach the k-th best (order kept)."""
    keep = np.empty(candidates.shape[0], dtype=np.int64)
    n = 0
    for i in range(candidates.shape[0]):
        row = candidates[i]
        if scores[row] + still_to_come >= theta:
            keep[n] = row
            n += 1
    return keep[:n]


@numba.njit(cache=True, nogil=True)
def _add_term(indptr, indices, tf, doc_len, tid, w, k1, b, avgdl, rows, scores):
    """Add one term's contribution to sorted `rows`: a merge walk when the postings are short
    next to the rows, one binary search per row otherwise."""
    start, end = indptr[tid], indptr[tid + 1]
    length = end - start
    if length == 0 or rows.shape[0] == 0:
        return
    if length <= rows.shape[0] * 16:
        i = 0
        p = start
        while i < rows.shape[0] and p < end:
            row, posted = rows[i], indices[p]
            if posted < row:
                p += 1
            elif posted > row:
                i += 1
            else:
                f = tf[p]
                scores[row] += w * _saturation(f, doc_len[row], k1, b, avgdl)
                i += 1
                p += 1
        return
    low = start
    for i in range(rows.shape[0]):
        row = rows[i]
        p = low + np.searchsorted(indices[low:end], row)
        if p < end and indices[p] == row:
            f = tf[p]
            scores[row] += w * _saturation(f, doc_len[row], k1, b, avgdl)
        low = p  # rows are sorted: later rows sit at or after this position


@numba.njit(cache=True, nogil=True)
def score_sorted_rows(indptr, indices, tf, doc_len, term_ids, weights, k1, b, avgdl, rows, scores):
    """Exact BM25 of distinct, sorted `rows` (candidates another retriever found) by the same term
    walk as the pruned search's second phase; `scores` is clean scratch of the segment's size and
    is left clean."""
    for j in range(term_ids.shape[0]):
        _add_term(indptr, indices, tf, doc_len, term_ids[j], weights[j], k1, b, avgdl, rows, scores)
    out = np.empty(rows.shape[0], dtype=np.float64)
    for i in range(rows.shape[0]):
        out[i] = scores[rows[i]]
        scores[rows[i]] = 0.0
    return out


@numba.njit(cache=True, nogil=True)
def _kth_score(candidates, scores, k):
    _, best = _heap_top_k(candidates, scores, k)
    return best[best.shape[0] - 1]


def exhaustive_top_k(indptr, indices, tf, doc_len, mask, term_ids, weights, k1, b, avgdl, k):
    """Every posting of every term scored (infinite bounds never let the pruning start): the
    reference the pruned search is measured and tested against."""
    rows = doc_len.shape[0]
    scores, seen = np.zeros(rows, dtype=np.float64), np.zeros(rows, dtype=np.uint8)
    return pruned_top_k(indptr, indices, tf, doc_len, mask, term_ids, np.asarray(weights, dtype=np.float64),
                        np.full(len(term_ids), np.inf), k1, b, avgdl, k, scores, seen, np.empty(rows, dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _heap_top_k(candidates, scores, k):
    """Top-k by a bounded min-heap: O(n log k), and most candidates fail one comparison."""
    size = 0
    heap_rows = np.empty(max(k, 1), dtype=np.int64)
    heap_scores = np.empty(max(k, 1), dtype=np.float64)
    for i in range(candidates.shape[0]):
        row = candidates[i]
        s = scores[row]
        if size < k:
            pos = size
            size += 1
            while pos > 0:  # sift up
                parent = (pos - 1) // 2
                if heap_scores[parent] <= s:
                    break
                heap_rows[pos] = heap_rows[parent]
                heap_scores[pos] = heap_scores[parent]
                pos = parent
            heap_rows[pos] = row
            heap_scores[pos] = s
        elif s > heap_scores[0]:
            pos = 0
            while True:  # sift down from the root
                child = 2 * pos + 1
                if child >= size:
                    break
                if child + 1 < size and heap_scores[child + 1] < heap_scores[child]:
                    child += 1
                if heap_scores[child] >= s:
                    break
                heap_rows[pos] = heap_rows[child]
                heap_scores[pos] = heap_scores[child]
                pos = child
            heap_rows[pos] = row
            heap_scores[pos] = s
    order = np.argsort(-heap_scores[:size], kind="mergesort")
    return heap_rows[:size][order], heap_scores[:size][order]

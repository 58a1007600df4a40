"""Ranking metrics and lexical baselines for retrieval tasks (``code_search``).

- :func:`ranks`: the 1-based rank of each query's own key among all keys of the pool by
  a score matrix (ties count against the query: a key scoring equal to the true one is
  ranked ahead of it, so a constant scorer gets the worst rank, not the best);
- :func:`retrieval_metrics`: ``mrr@10`` (the mean of 1/rank, 0 beyond rank 10, as
  CodeSearchNet reports it), ``mrr`` (without the cut) and ``recall@k``;
- :func:`words`: lower-cased word pieces of text or code (identifiers split at
  underscores and camelCase humps), the vocabulary of both lexical baselines;
- :func:`tfidf_scores`: cosine similarity of TF-IDF vectors (scikit-learn's
  ``TfidfVectorizer``, fitted on the pool's keys);
- :func:`bm25_scores`: Okapi BM25 (Robertson & Zaragoza's form, ``k1 = 1.2``,
  ``b = 0.75``, idf ``log(1 + (N - df + 0.5) / (df + 0.5))``) of each query against
  each key.
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"[A-Za-z]+|\d+")
_HUMP = re.compile(r"(?<=[a-z])(?=[A-Z])")


def words(text: str) -> list[str]:
    """Lower-cased word pieces: ``getHTTPResponse_code2`` -> ``get httpresponse code 2``."""
    out = []
    for piece in _WORD.findall(text):
        out += [p.lower() for p in _HUMP.split(piece) if p]
    return out


def ranks(scores: np.ndarray) -> np.ndarray:
    """``[n]`` rank of key ``i`` for query ``i`` under ``scores [n, n]`` (1 = best; keys
    scoring at least as high as the true one count ahead of it)."""
    true = np.diag(scores)
    return (scores >= true[:, None]).sum(axis=1)


def retrieval_metrics(rank: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``mrr@10``, ``mrr`` and ``recall@k`` of 1-based ranks."""
    rank = np.asarray(rank, dtype=np.float64)
    out = {
        "mrr@10": float(np.where(rank <= 10, 1.0 / rank, 0.0).mean()),
        "mrr": float((1.0 / rank).mean()),
    }
    for k in ks:
        out[f"recall@{k}"] = float((rank <= k).mean())
    return out


def tfidf_scores(queries: list[str], keys: list[str]) -> np.ndarray:
    """``[n_queries, n_keys]`` cosine similarities of TF-IDF vectors over :func:`words`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=words, sublinear_tf=True)
    k = vec.fit_transform(keys)
    q = vec.transform(queries)
    return (q @ k.T).toarray()


def bm25_scores(
    queries: list[str], keys: list[str], k1: float = 1.2, b: float = 0.75
) -> np.ndarray:
    """``[n_queries, n_keys]`` Okapi BM25 scores over :func:`words` (see the module):
    the sum over the query's distinct words of ``idf * tf (k1 + 1) / (tf + k1 (1 - b +
    b |d| / avgdl))``."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(analyzer=words)
    counts = vec.fit_transform(keys).tocsr().astype(np.float64)  # [n_keys, vocab]
    n = counts.shape[0]
    lengths = np.asarray(counts.sum(axis=1)).ravel()
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()), 1e-9))
    rows = np.repeat(np.arange(n), np.diff(counts.indptr))
    tf = counts.data
    weights = counts.copy()
    weights.data = idf[counts.indices] * tf * (k1 + 1) / (tf + norm[rows])
    present = vec.transform(queries).tocsr()
    present.data[:] = 1.0
    return (present @ weights.T).toarray()

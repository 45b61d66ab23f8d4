"""The BM25 analyzer: text -> terms, identical at index and query time."""
from __future__ import annotations

import re
from functools import lru_cache

from indexes.config import BM25Config

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


@lru_cache(maxsize=4)
def _stopwords(kind: str) -> frozenset[str]:
    if kind == "none":
        return frozenset()
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


class Analyzer:
    """Lower-case word tokens, optional English stopword removal and Snowball stemming."""

    def __init__(self, config: BM25Config) -> None:
        self._stopwords = _stopwords(config.stopwords)
        self._stemmer = None
        if config.stemmer != "none":
            import Stemmer

            self._stemmer = Stemmer.Stemmer(config.stemmer)
        self._cache: dict[str, str] = {}

    def terms(self, text: str) -> list[str]:
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stopwords]
        if self._stemmer is None:
            return words
        cache = self._cache
        missing = [w for w in set(words) if w not in cache]
        if missing:
            if len(cache) > 500_000:
                cache.clear()
            cache.update(zip(missing, self._stemmer.stemWords(missing)))
        return [cache[w] for w in words]

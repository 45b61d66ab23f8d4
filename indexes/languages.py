"""Which language a text is in, for collections whose BM25 analyzer is `language: auto`.

Why a heuristic and not a model: the analyzer only needs to pick a stopword list and a Snowball
stemmer, and a wrong pick on a short text costs little (the query side falls back to every
language, see `indexes.analyzer`). Two signals, no dependency beyond what BM25 already uses:
1. Script: Arabic, Cyrillic and Greek letters name their language (Arabic, Russian, Greek)
   when they are most of the text's letters; CJK text has no stemmer (the CJK handler cuts bigrams).
2. Stopwords: for Latin-script text, the language whose stopword list covers the most of the
   first 300 words wins, if it covers at least 2 words and beats the runner-up; stopwords are
   the most frequent words of any language, so even a paragraph carries a clear vote.
Anything else is undecided (None).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"(?u)\b\w\w*\b")
_SAMPLE_WORDS = 300
_MIN_VOTES = 2

# name -> (Snowball stemmer in PyStemmer, bm25s stopword list or None)
LANGUAGES: dict[str, tuple[str | None, str | None]] = {
    "english": ("english", "STOPWORDS_EN"), "french": ("french", "STOPWORDS_FRENCH"),
    "german": ("german", "STOPWORDS_GERMAN"), "spanish": ("spanish", "STOPWORDS_SPANISH"),
    "italian": ("italian", "STOPWORDS_ITALIAN"), "portuguese": ("portuguese", "STOPWORDS_PORTUGUESE"),
    "dutch": ("dutch", "STOPWORDS_DUTCH"), "danish": ("danish", "STOPWORDS_DANISH"),
    "swedish": ("swedish", "STOPWORDS_SWEDISH"), "norwegian": ("norwegian", "STOPWORDS_NORWEGIAN"),
    "turkish": ("turkish", "STOPWORDS_TURKISH"), "russian": ("russian", "STOPWORDS_RUSSIAN"),
    "arabic": ("arabic", None), "greek": ("greek", None), "cjk": (None, None),
}
_LATIN = [name for name in LANGUAGES if name not in ("russian", "arabic", "greek", "cjk")]
_SCRIPTS = {"arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff]"),
            "russian": re.compile(r"[\u0400-\u04ff]"), "greek": re.compile(r"[\u0370-\u03ff\u1f00-\u1fff]"),
            "cjk": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")}
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class Language:
    name: str
    stemmer: str | None
    stopwords: frozenset[str]


@lru_cache(maxsize=None)
def language(name: str) -> Language:
    stemmer, listed = LANGUAGES[name]
    words: frozenset[str] = frozenset()
    if listed:
        import bm25s.stopwords

        words = frozenset(getattr(bm25s.stopwords, listed))
    return Language(name, stemmer, words)


def detect(text: str) -> str | None:
    """The language of `text` (a key of LANGUAGES), or None when the evidence is too thin."""
    sample = text[:4000]
    letters = len(_LETTER.findall(sample))
    if not letters:
        return None
    if not sample.isascii():
        for name, pattern in _SCRIPTS.items():
            if len(pattern.findall(sample)) * 2 > letters:
                return name
    words = [w.lower() for w in _WORD.findall(sample)][:_SAMPLE_WORDS]
    votes = sorted(((sum(w in language(name).stopwords for w in words), name) for name in _LATIN), reverse=True)
    (best, name), (second, _) = votes[0], votes[1]
    return name if best >= _MIN_VOTES and best > second else None

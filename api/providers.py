"""In-process LiteLLM providers that live above `rag`, made known to `rag.llm` at start-up.

`rag.llm` registers `local/` itself; `fusion/` needs `experts`, which `rag` must not import, so the
service and the CLI call `install()` when they start. Registering only records a callback: LiteLLM
and the fusion code load when a `fusion:` model is first used.
"""
from __future__ import annotations

from collections.abc import Callable

from rag import llm


def _register_fusion() -> object:
    from api.litellm_fusion import register_fusion_provider

    return register_fusion_provider()


def install(overrides: dict[str, Callable[[], object]] | None = None) -> None:
    """The in-process `fusion/` provider, then `overrides` (a backend's, by prefix: on Ray Serve the
    `local/` and `fusion/` models decode in the model deployment, see `api.ray_serve.backend`)."""
    llm.add_provider("fusion/", _register_fusion)
    for prefix, register in (overrides or {}).items():
        llm.add_provider(prefix, register)

"""Service settings (`MIGHTY_*` environment variables or `mighty serve` options)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The default answer model, chosen by measurement (benchmarks/RESULTS.md, answer quality): the most
# accurate local model near 10 s p50 on 2 cores. SmolLM2-135M stays the fast model of the tests.
LOCAL_LLM = "local/qwen2.5-coder-0.5b-instruct"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIGHTY_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".mighty")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite in the home folder")
    no_auth: bool = False
    host: str | None = Field(None, description="address `mighty serve` binds; the Host header is checked "
                                               "against it (None: an embedded app, not checked)")
    allowed_hosts: str = Field("", description="comma-separated extra Host names this server answers to")
    allowed_origins: str = Field("", description="comma-separated web origins allowed to send writes")
    default_llm: str = LOCAL_LLM
    max_body_bytes: int = 20 * 1024 * 1024
    max_card_upload_bytes: int = Field(4 * 1024 ** 3, description="body limit of POST /v1/cards (multipart "
                                                                    "card uploads), instead of max_body_bytes")
    max_query_chars: int = 4096
    max_top_k: int = 100
    rate_limit_per_minute: int = 600
    retrieval_timeout_s: float = 10.0
    llm_timeout_s: float = 120.0
    llm_retries: int = 1
    context_tokens: int = 3000
    local_context_tokens: int = Field(700, description="smaller budget for the in-process CPU model")
    local_min_source_score: float = Field(0.8, ge=0, le=1, description="in-process CPU model: leave out sources "
                                                                       "scoring below this share of the best one")
    answer_tokens: int = 256
    local_answer_tokens: int = Field(128, description="answer limit for the in-process CPU model: one or two "
                                                      "sentences with citations fit, and every token a small "
                                                      "model rambles on costs tens of milliseconds")
    default_cards: Literal["auto", "none"] = Field("auto", description="expert cards for requests that do not say")
    card_route_threshold: float = Field(0.35, description="query similarity a card needs to be consulted")
    max_cards: int = Field(2, ge=0, description="cards consulted per request at most")
    cards_timeout_s: float = Field(120.0, gt=0, description="time allowed for expert cards to write knowledge")

    @property
    def cards_dir(self) -> Path:
        """Where registered card versions are stored."""
        return self.home.expanduser() / "cards"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'mighty.db').expanduser()}"

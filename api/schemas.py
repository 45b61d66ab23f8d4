"""Request and response bodies of the REST API (retrieval bodies live in rag.schemas)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from experts.selectors import SelectorSettings
from indexes.documents import non_finite_number
from indexes.names import CollectionName
from rag.schemas import Filters, Mode

# a request names cards by name (at most 8), or lets the router choose, or wants none
CardsChoice = Literal["auto", "none"] | Annotated[list[str], Field(min_length=1, max_length=8)]


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CollectionName  # the indexes-level rule, checked here too so the 422 comes before any work
    owner: str | None = Field(None, description="team owning it; defaults to the caller's team")
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    embedder: str | None = None
    language: Literal["configured", "auto"] | None = Field(
        None, description="auto: detect each document's language for BM25 stopwords and stemming")
    default_llm: str | None = None
    llm_fallbacks: list[str] = Field(default_factory=list, max_length=5)
    llm_timeout_s: float | None = Field(None, gt=0, le=600)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(alias="_id", min_length=1)
    text: str = Field(min_length=1)
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _finite(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if problem := non_finite_number(metadata):
            raise ValueError(problem)
        return metadata


class DocumentBatch(BaseModel):
    documents: list[DocumentIn] = Field(min_length=1, max_length=10_000)


class JobOut(BaseModel):
    id: str
    collection: str
    kind: str
    status: str
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    collection: CollectionName
    top_k: int = Field(5, ge=1)
    mode: Mode = "hybrid"
    filters: Filters | None = None
    llm: str | None = Field(None, description="LiteLLM model string; default: the collection's, then the server's")
    fallbacks: list[str] = Field(default_factory=list, max_length=5)
    api_base: str | None = Field(None, description="OpenAI-compatible base URL (admin keys only)")
    api_key: str | None = Field(None, description="key for api_base (admin keys only; never stored)")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float | None = Field(None, gt=0, le=600)
    stream: bool = False
    cards: CardsChoice | None = Field(None, description='"auto", "none" or card names; default: the server\'s')
    card_selectors: SelectorSettings | None = Field(None, description="override the knowledge selectors")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if isinstance(part, dict))
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2)
    top_k: int = Field(5, ge=1, description="Mighty extension: sources for rag: models")
    cards: CardsChoice | None = Field(None, description='Mighty extension for rag: models: "auto", "none" or '
                                                        'card names')
    llm: str | None = Field(None, description="Mighty extension for rag: models: the answering model (a cascade "
                                              "too); default: the collection's, then the server's")

"""Typed requests and results of retrieval, shared by the CLI, the REST API and the pipelines."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from indexes.filters import validate_filter

from indexes.names import CollectionName

Mode = Literal["bm25", "dense", "hybrid"]
FilterValue = str | int | float | bool
# Checked (field pattern, operators, sizes) before the type itself, by the same function the store
# runs before SQLite, so every request model that holds filters rejects a bad one with its reason.
Filters = Annotated[dict[str, FilterValue | dict[Literal["in"], list[FilterValue]]], BeforeValidator(validate_filter)]


class RetrievalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4096)
    collection: CollectionName | None = Field(None, description="set by callers that route between collections")
    top_k: int = Field(10, ge=1, le=1000)
    mode: Mode = "hybrid"
    fusion: Literal["convex", "rrf"] | None = Field(None, description="default: the collection's")
    dense_weight: float | None = Field(None, ge=0, le=1, description="convex weight of dense retrieval")
    adaptive: bool | None = None
    candidates: int | None = Field(None, ge=1, le=10_000)
    filters: Filters | None = None


class RetrieverRank(BaseModel):
    rank: int | None = Field(description="1-based rank in that retriever's list; None if outside it")
    score: float = Field(description="that retriever's raw score")


class Hit(BaseModel):
    id: str = Field(description="document id")
    chunk: int
    title: str
    text: str
    span: tuple[int, int] = Field(description="character offsets of the chunk in its document")
    metadata: dict[str, Any]
    score: float = Field(description="fused score, normalised to [0, 1] within this result")
    found_by: dict[str, RetrieverRank]


class ShardReport(BaseModel):
    """Which shards of a sharded collection answered: a partial result is flagged, never silent."""

    shards: int
    answered: list[int]
    missing: list[int] = Field(default_factory=list, description="shards that did not answer in time")
    partial: bool = Field(False, description="true when hits from the missing shards may be absent")


class RetrievalResult(BaseModel):
    query: str
    collection: str
    mode: Mode
    generation: int
    hits: list[Hit]
    weights: dict[str, float] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    shards: ShardReport | None = Field(None, description="sharded collections only")

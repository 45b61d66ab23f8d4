"""Typed settings: where state lives, and how each collection chunks, embeds and scores.

A collection's settings are frozen into its `collection.json` when it is created, so an index is
always queried with the analyzer and embedder it was built with.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexes.names import CollectionName

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
# 1: words only; 2: also CJK bigrams, emoji and Arabic normalisation (see indexes.analyzer)
ANALYZER_VERSION = 2


class MightySettings(BaseSettings):
    """Process-wide settings, read from `MIGHTY_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MIGHTY_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".mighty")


def model_cache_dir() -> Path:
    """Where converted models live (ONNX exports, safetensors of GGUF files): `$MIGHTY_MODEL_CACHE`,
    else `$MIGHTY_HOME/models`. Separate from the home so many homes can share one conversion."""
    override = os.environ.get("MIGHTY_MODEL_CACHE")
    return Path(override).expanduser() if override else MightySettings().home / "models"


class ChunkingConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(200, ge=16, le=8192, description="chunk length in embedder tokens")
    overlap: int = Field(32, ge=0, description="tokens shared by consecutive chunks")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingConfig":
        if self.overlap >= self.size:
            raise ValueError(f"chunk overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class BM25Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    k1: float = Field(1.2, ge=0)
    b: float = Field(0.75, ge=0, le=1)
    # "lucene": log(1 + (N - df + .5) / (df + .5)), never negative, the default.
    # "robertson": rank-bm25's BM25Okapi, negative idf floored at epsilon * mean idf.
    idf: Literal["lucene", "robertson"] = "lucene"
    epsilon: float = Field(0.25, ge=0)
    stopwords: Literal["en", "none"] = "en"
    stemmer: Literal["english", "none"] = "english"
    title_weight: int = Field(1, ge=0, le=5, description="times a document's title is indexed per chunk")
    language: Literal["configured", "auto"] = Field(
        "configured", description="'auto': each document's language is detected at ingest (indexes.languages) and "
                                  "picks its stopwords and Snowball stemmer, instead of `stopwords`/`stemmer`")
    analyzer: int = Field(ANALYZER_VERSION, ge=1, le=ANALYZER_VERSION,
                          description="how text is cut into terms (indexes.analyzer); fixed when the collection "
                                      "is created, so its queries are cut the way its documents were")


class EmbedderConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_EMBEDDER
    backend: Literal["torch", "onnx", "onnx-int8"] = "onnx"
    batch_size: int = Field(64, ge=1, le=4096)
    max_seq_length: int = Field(256, ge=8, le=8192)
    include_title: bool = True


class DenseConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hnsw_threshold: int = Field(20_000, ge=0, description="segments with more rows get an HNSW graph")
    # Measured on benchmarks/synthetic.py at 100k (non-duplicate vectors, RESULTS.md): M 32 /
    # efConstruction 128 / efSearch 128 gave recall@10 0.90 against exact search; M 48 /
    # efConstruction 256 gives 0.952 at efSearch 128 and 0.981 at 256, for about twice the graph
    # build time (small next to embedding) and ~1 ms more per query. Stored per collection at creation.
    hnsw_m: int = Field(48, ge=4, le=128)
    ef_construction: int = Field(256, ge=8)
    ef_search: int = Field(256, ge=8)


class FusionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["convex", "rrf"] = "convex"
    dense_weight: float = Field(0.6, ge=0, le=1, description="convex weight of the dense retriever")
    adaptive: bool = True
    rrf_k: int = Field(60, ge=1)
    candidates: int = Field(100, ge=1, le=10_000, description="hits taken from each retriever")
    calibrate: bool = Field(True, description="measure fusion settings on pseudo-queries at each commit "
                            "(indexes.calibration); dense_weight/adaptive then apply only without one")
    calibration_samples: int = Field(200, ge=10, le=5000, description="pseudo-queries per calibration")
    calibration_seed: int = Field(0, ge=0, description="seed of the chunk sample, for reproducible weights")
    recalibrate_fraction: float = Field(0.1, ge=0, le=1, description="keep the stored calibration until chunks "
                                        "written or deleted since exceed this share of the chunks it was "
                                        "measured on (0: measure at every commit)")


class CollectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CollectionName
    owner: str | None = Field(None, description="team that may write it (besides admins)")
    default_llm: str | None = Field(None, description="LiteLLM model string for answers over this collection")
    llm_fallbacks: list[str] = Field(default_factory=list, description="models LiteLLM tries when the first fails")
    llm_timeout_s: float | None = Field(None, gt=0, description="per-call model timeout for this collection")
    chunking: ChunkingConfig = ChunkingConfig()
    bm25: BM25Config = BM25Config()
    embedder: EmbedderConfig = EmbedderConfig()
    dense: DenseConfig = DenseConfig()
    fusion: FusionConfig = FusionConfig()
    max_document_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_segments: int = Field(8, ge=1, description="merge all segments when a commit leaves more")
    keep_generations: int = Field(3, ge=1)
    shards: int = Field(1, ge=1, le=256, description="shard folders documents are spread over by a hash of their "
                                                    "id (indexes.shards); fixed when the collection is created")

    @classmethod
    def from_stored(cls, text: str) -> "CollectionConfig":
        """Read a `collection.json`. Files written before analyzer versions existed were indexed
        with version 1, and are read as such: a collection is always queried as it was built."""
        data = json.loads(text)
        if isinstance(data, dict):
            bm25 = data.setdefault("bm25", {})
            if isinstance(bm25, dict):
                bm25.setdefault("analyzer", 1)
        return cls.model_validate(data)

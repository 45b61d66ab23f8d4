"""The card manifest: what a domain team declares about its card, validated at the boundary.

A manifest is TOML or YAML. Paths inside it are relative to the manifest's own folder, so a card is
a folder that can be copied, uploaded or registered as a unit. Errors name the file and the line.
"""
from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from indexes.names import CollectionName

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")
TEAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MANIFEST_NAMES = ("card.toml", "card.yaml", "card.yml")
CardKind = Literal["knowledge", "fusion"]
FusionMethod = Literal["mixture", "product", "proxy", "entropy", "learned", "contrastive"]


class ManifestError(ValueError):
    """A manifest cannot be read or is invalid; the message names the file and, when known, the line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(_Strict):
    """The weights: a base model plus a LoRA adapter folder, or a full model folder."""

    base: str = Field(description="Hugging Face id, local folder, or a registered local name such as "
                                  "smollm2-135m-instruct")
    adapter: str | None = Field(None, description="LoRA adapter folder (safetensors), relative to the manifest")
    full: str | None = Field(None, description="full model folder (safetensors), relative to the manifest")
    steers: list[str] = Field(default_factory=list, max_length=16,
                              description="other bases this card may steer by fusion (its own base always "
                                          "may); each must share the card's tokenizer vocabulary, which "
                                          "fusion checks")

    @model_validator(mode="after")
    def _one_artifact(self) -> "ModelSpec":
        if (self.adapter is None) == (self.full is None):
            raise ValueError("set exactly one of model.adapter (a LoRA folder) or model.full (a model folder)")
        return self

    @field_validator("steers")
    @classmethod
    def _steers(cls, steers: list[str]) -> list[str]:
        if any(not name.strip() or len(name) > 200 for name in steers):
            raise ValueError("model.steers entries are base names (1-200 characters)")
        return list(dict.fromkeys(steers))

    @property
    def steerable(self) -> list[str]:
        """Every base this card declares it may steer: its own first."""
        return list(dict.fromkeys([self.base, *self.steers]))

    @property
    def artifact(self) -> str:
        return self.adapter or self.full or ""


class GenerationSettings(_Strict):
    """How the card writes background knowledge for a query."""

    passages: int = Field(3, ge=1, le=16, description="knowledge passages written per query")
    max_new_tokens: int = Field(80, ge=8, le=512)
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy (then only one passage differs)")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    prompt: str = Field("Write a short factual paragraph of background knowledge about: {query}",
                        description="instruction given to the card; {query} is replaced by the query")

    @field_validator("prompt")
    @classmethod
    def _has_query(cls, prompt: str) -> str:
        if "{query}" not in prompt:
            raise ValueError("generation.prompt must contain {query}")
        return prompt


class FusionSettings(_Strict):
    """Token-level fusion weights, written by `mighty fusion fit` into a new card version."""

    method: FusionMethod | None = None
    base: str | None = Field(None, description="the base model the weights were fitted against")
    weights: list[float] | None = Field(None, description="per-model weights, base first")
    alpha: float | None = Field(None, description="proxy-tuning strength")
    beta: float | None = Field(None, ge=0, description="contrastive decoding: amateur penalty (default 0.5)")
    plausibility: float | None = Field(None, gt=0, le=1, description="contrastive decoding: keep tokens with "
                                                                      "p >= this x max p (default 0.1)")
    gate: dict[str, list[float]] | None = Field(None, description="entropy-gate parameters (learned method)")
    temperature: float | None = Field(None, gt=0, description="entropy method: how sharply the more certain "
                                                                "model is preferred")
    experts: list[str] | None = Field(None, description="the cards the weights are for, in order (set when "
                                                         "several cards were fitted together)")
    fitted_on: str | None = None
    validation_nll: float | None = None


class RoutingSettings(_Strict):
    """How `auto` routing treats this card; written by `mighty cards route-fit` into a new card version."""

    threshold: float | None = Field(None, ge=-1, le=1, description="query similarity this card needs to be "
                                    "consulted (default: the server's card_route_threshold)")
    fitted_on: str | None = Field(None, description="the question sets the threshold was fitted on")
    fit_examples: int | None = Field(None, ge=0, description="questions in the fit split")
    heldout_precision: float | None = Field(None, ge=0, le=1, description="on the held-out split, after fitting")
    heldout_recall: float | None = Field(None, ge=0, le=1, description="on the held-out split, after fitting")
    fitted_at: datetime | None = None


class HeldoutSplit(_Strict):
    """Which documents of the training corpus were held out, so evaluations never score training text."""

    corpus: str = Field(description="the corpus path or collection:<name> the card was trained on")
    corpus_sha256: str | None = None
    key: str = Field("title", description="the field that identifies a document when splitting")
    seed: int = 0
    documents: list[str] = Field(default_factory=list)


class CardMetrics(_Strict):
    heldout_ppl_base: float | None = None
    heldout_ppl_card: float | None = None
    train_seconds: float | None = None
    train_tokens: int | None = None
    train_tokens_per_s: float | None = None
    steps: int | None = None
    heldout_tokens: int | None = Field(None, description="held-out tokens the perplexities were measured on")
    measured_at: datetime | None = None


class CardManifest(_Strict):
    name: str
    version: str
    domain: str = Field(min_length=1, max_length=128)
    description: str = Field(min_length=1, max_length=2000,
                             description="what the card knows; auto-routing compares queries with it")
    owner: str = Field(description="the team that owns the card; team keys may only change their own cards")
    kind: list[CardKind] = Field(default_factory=lambda: ["knowledge"])
    model: ModelSpec
    collection: CollectionName | None = Field(None, description="Mighty collection holding the card's source corpus "
                                                     "(used to fact-check its knowledge)")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    fusion: FusionSettings = Field(default_factory=FusionSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    metrics: CardMetrics = Field(default_factory=CardMetrics)
    heldout: HeldoutSplit | None = None
    training: dict[str, Any] | None = Field(None, description="the settings `mighty cards train` used, so a "
                                                                "card can be reproduced")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError("name must be 1-64 lowercase letters, digits, '.', '_' or '-', starting alphanumeric")
        return name

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if not VERSION.match(version):
            raise ValueError("version must be 1-32 letters, digits, '.', '+', '_' or '-' (e.g. 1.0.0)")
        return version

    @field_validator("owner")
    @classmethod
    def _owner(cls, owner: str) -> str:
        if not TEAM.match(owner):
            raise ValueError("owner must be a team name: letters, digits, '.', '_' or '-'")
        return owner

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, kind: Any) -> Any:
        if kind == "both":
            return ["knowledge", "fusion"]
        if isinstance(kind, str):
            return [kind]
        return kind

    @field_validator("kind")
    @classmethod
    def _kind_not_empty(cls, kind: list[str]) -> list[str]:
        if not kind:
            raise ValueError("kind must name at least one of knowledge, fusion")
        return sorted(set(kind))

    @property
    def ref(self) -> str:
        """How knowledge from this card is cited: card:name@version."""
        return f"card:{self.name}@{self.version}"


def find_manifest(path: Path) -> Path:
    """A manifest file, or the manifest inside a card folder."""
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise ManifestError(f"{path}: no card manifest here; expected one of {', '.join(MANIFEST_NAMES)}")
    if not path.is_file():
        raise ManifestError(f"{path}: no such file or folder")
    return path


def parse_manifest(text: str, source: str) -> CardManifest:
    """Validate manifest text; `source` is the file name used in errors (its suffix picks the format)."""
    data = _read(text, source)
    try:
        return CardManifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        line = _line_of(text, first["loc"], source)
        at = f"{source}:{line}" if line else source
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ManifestError(f"{at}: {where}: {first['msg']}{more}") from None


def load_manifest(path: Path) -> CardManifest:
    manifest_path = find_manifest(path)
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{manifest_path}: cannot read: {error}") from None
    return parse_manifest(text, str(manifest_path))


def dump_manifest(manifest: CardManifest, path: Path) -> None:
    """Write a manifest as TOML (the format `mighty cards train` produces)."""
    data = manifest.model_dump(mode="json", exclude_none=True)
    path.write_text(_to_toml(data), encoding="utf-8")


def _read(text: str, source: str) -> dict[str, Any]:
    if source.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ManifestError(f"{source}{line}: invalid YAML: {getattr(error, 'problem', error)}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            line = re.search(r"line (\d+)", str(error))
            raise ManifestError(f"{source}{':' + line.group(1) if line else ''}: invalid TOML: {error}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}:1: a manifest is a table of fields (name, version, model, ...)")
    return data


def _line_of(text: str, loc: tuple[Any, ...], source: str) -> int | None:
    """Best-effort line of a field: its key inside the right table, else the table, else None."""
    keys = [str(part) for part in loc if isinstance(part, str)]
    if not keys:
        return None
    lines = text.splitlines()
    yaml_like = source.endswith((".yaml", ".yml"))
    section_start = 0
    if len(keys) > 1 and not yaml_like:
        header = re.compile(rf"^\s*\[\s*{re.escape('.'.join(keys[:-1]))}\s*\]")
        for number, line in enumerate(lines):
            if header.match(line):
                section_start = number
                break
    key = re.compile(rf"^\s*[\"']?{re.escape(keys[-1])}[\"']?\s*[:=]")
    for number in range(section_start, len(lines)):
        if key.match(lines[number]):
            return number + 1
    return section_start + 1 if section_start else None


def _to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer for the manifest's shape: scalars, lists, one level of nested tables."""
    import json

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(item) for item in value) + "]"
        return json.dumps(str(value))  # JSON strings are valid TOML basic strings

    top, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            body = [f"{k} = {scalar(v)}" for k, v in value.items() if not isinstance(v, dict)]
            nested = [(k, v) for k, v in value.items() if isinstance(v, dict)]
            tables.append(f"[{key}]\n" + "\n".join(body))
            for sub, subvalue in nested:
                tables.append(f"[{key}.{sub}]\n" + "\n".join(f"{k} = {scalar(v)}" for k, v in subvalue.items()))
        else:
            top.append(f"{key} = {scalar(value)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"

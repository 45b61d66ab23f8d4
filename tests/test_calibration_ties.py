"""Ties toward dense for well-matched queries: among the weights the sentence pseudo-queries cannot
tell apart (within two paired standard errors), a query matched better than the typical sentence
moves toward the most dense one, unless the embedder is dominated on known items; then a query
gets dense weight only when matched beyond every keyword bag."""
from __future__ import annotations

import numpy as np
import pytest

from indexes.calibration import GRID, Evidence, FusionCalibration, choose, query_weight
from indexes.fusion import tie_weight


def test_tie_weight_rises_from_the_weight_to_the_top_of_the_tied_range():
    weights = [tie_weight(top, 0.6, 0.1, 0.5, 0.9) for top in np.linspace(0.3, 0.9, 31)]
    assert weights[0] == 0.5 and weights[-1] == pytest.approx(0.9)  # unchanged below the mean, capped above
    assert all(a <= b for a, b in zip(weights, weights[1:]))
    assert tie_weight(0.65, 0.6, 0.1, 0.5, 0.9) == pytest.approx(0.7)  # half a standard deviation: half way
    assert tie_weight(0.9, 0.6, 0.1, 0.5, 0.5) == 0.5 and tie_weight(0.9, 0.6, 0.0, 0.5, 0.9) == 0.5


def test_query_weight_breaks_ties_only_for_queries_matched_better_than_sentences():
    styled = {"dense_weight": 0.5, "keyword_weight": 0.0, "dense_weight_max": 0.9,
              "dense_top": {"sentence": 0.6, "keywords": 0.4}, "dense_top_spread": {"sentence": 0.1}}
    assert query_weight(styled, 0.4) == 0.0  # keyword-like: the keyword weight, as before
    assert query_weight(styled, 0.5) == pytest.approx(0.25)
    assert query_weight(styled, 0.6) == 0.5
    assert query_weight(styled, 0.65) == pytest.approx(0.7) and query_weight(styled, 0.95) == pytest.approx(0.9)
    older = {k: v for k, v in styled.items() if k not in ("dense_weight_max", "dense_top_spread")}
    assert query_weight(older, 0.95) == 0.5  # a manifest written before ties were measured reads as before
    old = FusionCalibration.from_dict({"dense_weight": 0.5, "normalisation": "zscore", "adaptive": True,
                                       "probes": {}, "seed": 0})
    assert old.dense_weight_max is None and old.dominated_top is None


def _pools(count: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    return [{"bm25": rng.gamma(2.0, 2.0, 30), "dense": rng.uniform(0.0, 0.8, 30)} for _ in range(count)]


def _evidence(sentence: np.ndarray, keywords: np.ndarray, rng: np.random.Generator) -> dict[str, Evidence]:
    """Evidence with given per-query gains[weight, query] (the same under both normalisations)."""
    found = {}
    for style, gains, tops in (("sentence", sentence, 0.7), ("keywords", keywords, 0.5)):
        queries = gains.shape[1]
        found[style] = Evidence(_pools(queries, rng), rng.normal(tops, 0.05, queries), np.stack([gains, gains]))
    return found


def _flat_sentences(queries: int, rng: np.random.Generator) -> np.ndarray:
    """Per-query nDCG that is the same for weights 0.3-1.0 and clearly lower below: a flat curve."""
    base = rng.uniform(0.0, 1.0, queries)
    return np.stack([base * (0.4 if w < 0.3 else 1.0) for w in GRID])


def _keyword_bags(queries: int, dense_share: float, rng: np.random.Generator) -> np.ndarray:
    """BM25 finds every source; dense alone finds a `dense_share` of them; mixes in between."""
    found = (rng.uniform(size=queries) < dense_share).astype(float)
    return np.stack([np.ones(queries) * (1 - w) + found * w for w in GRID])


def test_a_flat_sentence_curve_records_the_tied_range_up_to_the_last_mix():
    rng = np.random.default_rng(4)
    chosen = choose(_evidence(_flat_sentences(200, rng), _keyword_bags(200, 0.6, rng), rng), 0.6, True, 0)
    assert chosen.dense_weight == 0.6  # flat from 0.3: the tie goes to the configured default, as before
    assert chosen.dense_weight_max == 0.9  # tied all the way to dense alone, which a tie never reaches
    assert chosen.dense_top_spread["sentence"] > 0
    assert chosen.weight(chosen.dense_top["sentence"] + chosen.dense_top_spread["sentence"]) == pytest.approx(0.9)
    assert chosen.weight(chosen.dense_top["sentence"]) == pytest.approx(0.6)


def test_a_clearly_worse_weight_ends_the_tied_range():
    rng = np.random.default_rng(5)
    sentences = _flat_sentences(200, rng)
    sentences[8:] *= 0.5  # 0.8 and above lose half of every query's nDCG: far beyond two standard errors
    chosen = choose(_evidence(sentences, _keyword_bags(200, 0.6, rng), rng), 0.6, True, 0)
    assert chosen.dense_weight == 0.6 and chosen.dense_weight_max == 0.7


def test_an_embedder_dominated_on_known_items_gets_no_tied_range():
    rng = np.random.default_rng(6)
    chosen = choose(_evidence(_flat_sentences(200, rng), _keyword_bags(200, 0.25, rng), rng), 0.6, True, 0)
    assert chosen.dense_weight == 0.6 and chosen.dense_weight_max == 0.6
    assert chosen.weight(0.99) == 0.6  # a closely matched query is not evidence that dense is right here


def _mixing_sentences(queries: int, rng: np.random.Generator) -> np.ndarray:
    """Per-query nDCG that peaks at a mix and is lowest for dense alone: dense wins no sentence style."""
    base = rng.uniform(0.0, 1.0, queries)
    return np.stack([base * (1.0 - abs(w - 0.4)) * (0.6 if w == 1.0 else 1.0) for w in GRID])


def test_an_embedder_that_wins_nothing_weighs_in_only_beyond_every_keyword_bag():
    rng = np.random.default_rng(7)
    evidence = _evidence(_mixing_sentences(200, rng), _keyword_bags(200, 0.25, rng), rng)
    chosen = choose(evidence, 0.6, True, 0)
    highest = float(evidence["keywords"].tops.max())
    assert chosen.dominated_top == highest
    assert chosen.keyword_weight == 0.0 and chosen.dense_weight == 0.4
    # no ramp: a query matched better than the typical keyword bag, but no better than the best one,
    # is still treated as one (the ramp would give it part of the sentence weight)
    between = (chosen.dense_top["keywords"] + highest) / 2
    assert chosen.weight(between) == 0.0 and chosen.weight(highest) == 0.0
    assert chosen.weight(highest + 1e-6) == 0.4 and chosen.weight(0.99) == 0.4
    assert query_weight(chosen.to_dict() | {"dominated_top": None}, between) > 0.0  # the ramp it replaces


def test_an_embedder_weak_on_known_items_but_winning_sentences_keeps_the_ramp():
    rng = np.random.default_rng(9)  # e.g. entity abstracts: rare names defeat it, descriptions do not
    chosen = choose(_evidence(_flat_sentences(200, rng), _keyword_bags(200, 0.25, rng), rng), 0.6, True, 0)
    assert chosen.dominated_top is None and chosen.dense_weight_max == 0.6  # no tie range, but the ramp
    assert 0.0 < chosen.weight((chosen.dense_top["keywords"] + chosen.dense_top["sentence"]) / 2) < 0.6


def test_an_embedder_with_a_strong_share_of_known_items_keeps_the_ramp_and_the_ties():
    rng = np.random.default_rng(8)  # dense finds 45% of the keyword bags' sources (MS MARCO: 46-61%)
    chosen = choose(_evidence(_flat_sentences(200, rng), _keyword_bags(200, 0.45, rng), rng), 0.6, True, 0)
    assert chosen.dominated_top is None and chosen.dense_weight_max == 0.9
    assert 0.0 < chosen.weight((chosen.dense_top["keywords"] + chosen.dense_top["sentence"]) / 2) < 0.6

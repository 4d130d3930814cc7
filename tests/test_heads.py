"""Head specs and score files: parsing, top/random selection, exclusion, shape checks, clear errors."""

from __future__ import annotations

import json

import pytest

from rh_models.errors import RHError
from rh_models.heads import HeadScores, HeadSet, select_heads


def _scores(tmp_path, n_layers=4, n_heads=3, strong=((2, 1), (0, 2), (3, 0)), as_lists=True):
    raw = {}
    for layer in range(n_layers):
        for head in range(n_heads):
            value = 0.9 - 0.2 * strong.index((layer, head)) if (layer, head) in strong else 0.01 * (layer + head)
            raw[f"{layer}-{head}"] = [value, value] if as_lists else value
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(raw))
    return path


def test_explicit_spec_keeps_order_and_validates():
    heads = select_heads("3-4; 0-1", n_layers=5, n_heads=6)
    assert heads.heads == ((3, 4), (0, 1))
    assert heads.spec() == "3-4;0-1"
    assert heads.by_layer() == {0: [1], 3: [4]}
    assert len(select_heads("none", 5, 6)) == 0


@pytest.mark.parametrize(
    "spec, message",
    [("99-0", "layer 99 out of range"), ("0-9", "head 9 out of range"), ("1-x", "bad head '1-x'"),
     ("top:0", "positive integer"), ("random:k", "positive integer"), ("1-1;1-1", "duplicate")],
)
def test_bad_specs_give_one_clear_line(spec, message):
    with pytest.raises(RHError, match=message) as info:
        select_heads(spec, n_layers=5, n_heads=6)
    assert "\n" not in str(info.value)


def test_top_needs_scores_and_ranks_by_mean(tmp_path):
    with pytest.raises(RHError, match="needs head_scores"):
        select_heads("top:2", 4, 3)
    scores = HeadScores.load(_scores(tmp_path), 4, 3)
    assert select_heads("top:3", 4, 3, scores=scores).heads == ((2, 1), (0, 2), (3, 0))
    with pytest.raises(RHError, match="exceeds"):
        select_heads("top:13", 4, 3, scores=scores)


def test_float_format_is_accepted(tmp_path):
    scores = HeadScores.load(_scores(tmp_path, as_lists=False), 4, 3)
    assert scores.top(1) == [(2, 1)]


def test_random_is_deterministic_per_seed_and_excludes_retrieval_heads(tmp_path):
    scores = HeadScores.load(_scores(tmp_path), 4, 3)
    draws = {seed: select_heads("random:4", 4, 3, scores=scores, seed=seed).heads for seed in range(6)}
    assert draws[0] == select_heads("random:4", 4, 3, scores=scores, seed=0).heads
    assert len(set(draws.values())) > 1
    retrieval = {(2, 1), (0, 2), (3, 0)}  # mean > 0.1
    assert all(not retrieval & set(heads) for heads in draws.values())
    # random_exclude=N excludes exactly the top N instead of the > 0.1 rule
    only_top1 = {select_heads("random:10", 4, 3, scores=scores, seed=s, random_exclude=1).heads for s in range(5)}
    assert all((2, 1) not in heads and len(heads) == 10 for heads in only_top1)
    with pytest.raises(RHError, match="larger than the 9 heads left"):
        select_heads("random:10", 4, 3, scores=scores)


def test_random_layer_match_draws_same_count_per_layer(tmp_path):
    scores = HeadScores.load(_scores(tmp_path), 4, 3)
    top = select_heads("top:3", 4, 3, scores=scores)
    matched = select_heads("random:3", 4, 3, scores=scores, seed=3, random_match="layer")
    assert {l: len(h) for l, h in matched.by_layer().items()} == {l: len(h) for l, h in top.by_layer().items()}
    assert not set(matched) & set(top)
    with pytest.raises(RHError, match="random_match"):
        select_heads("random:3", 4, 3, scores=scores, random_match="depth")


def test_score_file_shape_and_format_errors(tmp_path):
    path = _scores(tmp_path)
    with pytest.raises(RHError, match="is for a model with 4 layers x 3 heads, but this model has 30 x 9"):
        HeadScores.load(path, 30, 9)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RHError, match="not valid JSON"):
        HeadScores.load(bad, 4, 3)
    bad.write_text('{"0-0": "high"}')
    with pytest.raises(RHError, match="must be numbers"):
        HeadScores.load(bad, 1, 1)
    with pytest.raises(RHError, match="does not exist"):
        HeadScores.load(tmp_path / "missing.json")


def test_headset_rejects_out_of_range():
    with pytest.raises(RHError):
        HeadSet(((0, 3),), 1, 3)

"""Head specs and score files: parsing, top/random selection, exclusion, shape checks, clear errors."""

from __future__ import annotations

import json
import re

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


# ------------------------------------------------------------------------------------ rankings that run out


def _file(tmp_path, values, n_layers=2, n_heads=4, name="few.json"):
    """A score file of the tiny shape: ``values`` maps (layer, head) to its per-test list; every other head ``[]``
    (or ``[0.0]`` when ``values`` is a float, for a file where tests contributed and every score is 0)."""
    rest = [] if not isinstance(values, float) else [values]
    per_head = values if isinstance(values, dict) else {}
    path = tmp_path / name
    path.write_text(json.dumps({f"{l}-{h}": per_head.get((l, h), rest) for l in range(n_layers) for h in range(n_heads)}))
    return path


@pytest.mark.parametrize("values, why", [({}, "no test contributed (every list is empty)"), (0.0, "every score is 0")])
def test_a_file_that_ranks_no_head_is_refused_wherever_a_ranking_is_read(tmp_path, values, why):
    scores = HeadScores.load(_file(tmp_path, values), 2, 4)
    for spec, extra in [("top:2", {}), ("top:25%", {}), ("random:2", {}),
                        ("random:2", {"random_exclude": 1}), ("random:2", {"random_match": "layer"})]:
        with pytest.raises(RHError, match=f"ranks no head: {re.escape(why)}") as info:
            select_heads(spec, 2, 4, scores=scores, **extra)
        assert "\n" not in str(info.value)
        # an explicit tie rule: every place drawn at random (and recorded as unscored by the mask record)
        drawn = select_heads(spec, 2, 4, scores=scores, tie_break="random", seed=3, **extra)
        assert len(drawn) == 2 and all(scores.mean(head) <= 0 for head in drawn)
    # what reads no ranking still works: a draw from every head, or random:K without a score file
    assert len(select_heads("random:2", 2, 4, scores=scores, random_exclude=0)) == 2
    assert len(select_heads("random:2", 2, 4)) == 2


def test_top_past_the_scored_heads_is_refused_unless_tie_break_random(tmp_path):
    scores = HeadScores.load(_file(tmp_path, {(1, 2): [0.9], (0, 3): [0.0, 0.2]}), 2, 4)  # 2 of 8 heads above 0
    assert select_heads("top:2", 2, 4, scores=scores).heads == ((1, 2), (0, 3))
    for spec, extra, asked in [("top:3", {}, 3), ("top:50%", {}, 4), ("random:2", {"random_exclude": 3}, 3),
                               ("random:3", {"random_match": "layer"}, 3)]:
        with pytest.raises(RHError, match=f"{asked} heads asked for, but only 2 of 8 heads scored above 0 .*"
                                          "tie_break=random") as info:
            select_heads(spec, 2, 4, scores=scores, **extra)
        assert "\n" not in str(info.value)
    drawn = {seed: select_heads("top:50%", 2, 4, scores=scores, seed=seed, tie_break="random").heads
             for seed in range(6)}
    assert all(heads[:2] == ((1, 2), (0, 3)) and len(set(heads)) == 4 for heads in drawn.values())
    assert drawn[1] == select_heads("top:4", 2, 4, scores=scores, seed=1, tie_break="random").heads  # per seed
    assert len({heads[2:] for heads in drawn.values()}) > 1  # drawn, not the first heads by (layer, head)
    excluded = select_heads("random:5", 2, 4, scores=scores, seed=2, random_exclude=3, tie_break="random")
    assert len(excluded) == 5 and not {(1, 2), (0, 3)} & set(excluded)
    # whatever the control's own seed, it excludes exactly the heads top:3 (seed 0, as rh compare's rows) chose
    top3 = set(select_heads("top:3", 2, 4, scores=scores, tie_break="random").heads)
    for seed in range(6):
        drawn = select_heads("random:5", 2, 4, scores=scores, seed=seed, random_exclude=3, tie_break="random")
        assert not top3 & set(drawn)
    with pytest.raises(RHError, match="tie_break='layer' is not supported"):
        select_heads("top:3", 2, 4, scores=scores, tie_break="layer")


def test_the_mask_record_says_how_many_heads_had_no_score(tmp_path):
    """Both backends' ``set_mask`` / ``mask_info`` (:class:`MaskedLM`): the tie rule and the unscored count."""
    from rh_models.masked_lm import MaskedLM

    class Unmasked(MaskedLM):
        def _apply_mask(self, heads, method, scope):
            pass

    lm = Unmasked()
    lm.n_layers, lm.n_heads, lm.head_means = 2, 4, None
    lm.head_scores = HeadScores.load(_file(tmp_path, {(1, 2): [0.9], (0, 3): [0.2]}), 2, 4)
    with pytest.raises(RHError, match="3 heads asked for, but only 2 of 8"):
        lm.set_mask("top:3")
    heads = lm.set_mask("top:3", seed=5, tie_break="random")
    info = lm.mask_info()
    assert (info["tie_break"], info["unscored_heads"], info["seed"]) == ("random", 1, 5) and heads.heads[:2] == ((1, 2), (0, 3))
    lm.set_mask("top:2")
    assert (lm.mask_info()["tie_break"], lm.mask_info()["unscored_heads"]) == ("none", 0)
    lm.set_mask("random:2", seed=1)
    assert lm.mask_info()["unscored_heads"] is None  # a random draw ranks nothing


def test_mask_args_check_the_ranking_before_the_model_loads(tmp_path):
    """``tie_break`` is a shared mask arg (``rh-hf`` and ``rh-vllm`` both take it through ``MASK_ARGS``)."""
    from rh_models.mask_args import MASK_ARGS, parse_mask_args

    few = _file(tmp_path, {(1, 2): [0.9], (0, 3): [0.2]})
    assert "tie_break" in MASK_ARGS
    with pytest.raises(RHError, match="4 heads asked for, but only 2 of 8 heads scored above 0"):
        parse_mask_args("top:50%", str(few))
    assert parse_mask_args("top:50%", str(few), tie_break="random").selection()["tie_break"] == "random"
    assert parse_mask_args("top:2", str(few)).selection()["tie_break"] == "none"
    with pytest.raises(RHError, match="ranks no head"):
        parse_mask_args("random:2", str(_file(tmp_path, 0.0, name="zeros.json")))
    with pytest.raises(RHError, match="tie_break='first' is not supported"):
        parse_mask_args("top:2", str(few), tie_break="first")

"""The second real model family offline: Gemma-3-270M (base; sliding-window + global layers, one KV head,
query/key norms), from PyPI chunk packages, converted once into the cache."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.gemma


@pytest.fixture(scope="module")
def gemma_dir():
    from rh_models.zoo import resolve_pretrained

    return resolve_pretrained("gemma3-270m")


def test_zoo_entry_is_converted_once_and_has_the_gemma3_shape(gemma_dir):
    from pathlib import Path

    from transformers import AutoConfig, AutoTokenizer

    from rh_models.shape import head_shape
    from rh_models.zoo import resolve_pretrained

    config_file = Path(gemma_dir) / "config.json"
    stamp = config_file.stat().st_mtime_ns
    assert resolve_pretrained("gemma3-270m") == gemma_dir and config_file.stat().st_mtime_ns == stamp  # cached
    config = AutoConfig.from_pretrained(gemma_dir)
    assert config.model_type == "gemma3_text" and head_shape(config) == (18, 4) and config.num_key_value_heads == 1
    assert "sliding_attention" in config.layer_types and "full_attention" in config.layer_types
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    assert not tokenizer.chat_template  # the base model: prompts without a chat template
    listing = run_cli("rh", "models")
    assert listing.returncode == 0 and "gemma3-270m" in listing.stdout and "Gemma Terms of Use" in listing.stdout


# One `rh compare` on Gemma serves both tests below: detection first (no --head-scores) on a small grid, on the loaded
# model, then NIAH with the top 2 heads of that detection (3 % of 72) masked vs 2 random non-retrieval heads, 3 seeds.
# The detection grid is the small one (400 tokens x depths 0/100 x 2 paper needles: 4 tests): it ranks the same top 2
# heads (11-2, 5-1) as 500/1000 tokens x 0/50/100 x 3 needles (18 tests), at a fraction of the cost. NIAH: 500 tokens
# x depths 0/100 x both needles (4 docs). Measured on this grid: full 1.00, retrieval@2 0.16, random@2 0.84 (seeds
# 0.98, 0.59, 0.96: the second draw masks heads 2-0 and 4-1, the README's low seed), as on 3 depths (0.17 vs 0.81).
# With --prefix-reuse: its cached prefixes keep every key of Gemma's sliding layers (the sliding mask windows them).
DETECT_GRID = {"lengths": [400], "depths": [0, 100], "samples": 2}
NIAH_GRID = {"lengths": [500], "depths": [0, 100], "samples": 2, "seed": 1}  # not detection's haystack


@pytest.fixture(scope="module")
def gemma_compare(gemma_dir, tmp_path_factory):
    """(exit code, output folder) of `rh compare --model gemma3-270m` without --head-scores."""
    from rh_eval.cli import main

    out = tmp_path_factory.mktemp("gemma-compare") / "out"
    code = main(["compare", "--model", "gemma3-270m", "--tasks", "rh_niah_paper", "--k", "2", "--seeds", "3",
                 "--output-dir", str(out), "--metadata", json.dumps(NIAH_GRID), "--batch-size", "6", "--no-plots", "--prefix-reuse",
                 "--detect-lengths", ",".join(map(str, DETECT_GRID["lengths"])),
                 "--detect-depths", ",".join(map(str, DETECT_GRID["depths"])),
                 "--detect-samples", str(DETECT_GRID["samples"])])
    return code, out


def test_detection_on_a_small_grid_finds_sparse_retrieval_heads(gemma_compare):
    from rh_models.heads import HeadScores

    _, out = gemma_compare
    meta = json.loads((out / "head_scores.meta.json").read_text())
    assert meta["model"] == "gemma3-270m" and (meta["n_layers"], meta["n_heads"]) == (18, 4)
    assert (meta["lengths"], meta["depths"], meta["samples"]) == (DETECT_GRID["lengths"], DETECT_GRID["depths"], 2)
    assert meta["tests_seen"] == 4 and meta["heads"] == 72
    assert meta["tests_contributing"] >= 3  # the base model finds paper needles at 400 tokens (greedy: fixed)
    share = HeadScores.load(out / "head_scores.json", 18, 4).share_above(0.1)
    print(f"\nGemma detection: {meta['tests_contributing']}/4 tests answered, {share:.1%} of heads above 0.1, "
          f"top {meta['top'][:4]}")
    assert share == meta["fraction_above_0.1"] and 0 < share < 0.25  # and few heads copy them


def test_masking_its_top_retrieval_heads_hurts_niah_more_than_random_heads(gemma_compare):
    """The paper's contrast on a second family: detection first (no --head-scores), then NIAH at 500 tokens with
    the top 2 heads of that detection masked vs 2 random non-retrieval heads, 3 seeds."""
    from rh_models.heads import HeadScores

    code, out = gemma_compare
    assert code == 0
    detected = HeadScores.load(out / "head_scores.json", 18, 4)  # written by the compare run itself
    board = json.loads((out / "leaderboard.json").read_text())
    assert sorted(tuple(h) for h in board["conditions"]["retrieval@2"]["heads"]) == sorted(detected.top(2))
    column = "rh_niah_paper/score,none"
    full, retrieval, random = (board["values"][name][column] for name in ("full", "retrieval@2", "random@2"))
    seeds = [json.loads((out / "conditions" / f"random@2-seed{s}" / "results.json").read_text())
             ["results"]["rh_niah_paper"]["score,none"] for s in range(3)]
    print(f"\nGemma NIAH: full {full:.3f}, retrieval@2 {retrieval:.3f}, random@2 {random:.3f} (seeds {seeds})")
    assert retrieval < full and retrieval < random, (full, retrieval, random)

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


def test_detection_on_a_small_grid_finds_sparse_retrieval_heads(gemma_dir, tmp_path):
    from rh_eval.detect import detect
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained="gemma3-270m", batch_size=1)
    out = tmp_path / "scores.json"
    summary = detect(lm, out, lengths=[400], depths=[0, 100], samples=2, batch_by="length", progress=False)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["model"] == "gemma3-270m" and (meta["n_layers"], meta["n_heads"]) == (18, 4)
    assert summary["tests_seen"] == 4 and summary["heads"] == 72
    assert summary["tests_contributing"] >= 3  # the base model finds paper needles at 400 tokens (greedy: fixed)
    assert 0 < summary["fraction_above_0.1"] < 0.25  # and few heads copy them


def test_masking_its_top_retrieval_heads_hurts_niah_more_than_random_heads(gemma_dir, tmp_path):
    """The paper's contrast on a second family: detection first (no --head-scores), then NIAH at 500 tokens with
    the top 2 heads (3 % of 72) masked vs 2 random non-retrieval heads, 3 seeds."""
    from rh_eval.cli import main

    out = tmp_path / "out"
    grid = {"lengths": [500], "depths": [0, 50, 100], "samples": 2, "seed": 1}  # not detection's haystack
    assert main(["compare", "--model", "gemma3-270m", "--tasks", "rh_niah_paper", "--k", "2", "--seeds", "3",
                 "--output-dir", str(out), "--metadata", json.dumps(grid), "--batch-size", "6", "--no-plots",
                 "--detect-lengths", "500,1000", "--detect-depths", "0,50,100", "--detect-samples", "3"]) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    column = "rh_niah_paper/score,none"
    full, retrieval, random = (board["values"][name][column] for name in ("full", "retrieval@2", "random@2"))
    assert retrieval < full and retrieval < random, (full, retrieval, random)

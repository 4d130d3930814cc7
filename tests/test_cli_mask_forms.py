"""Every ``mask_heads`` form of the README through the stock ``lm_eval`` CLI, each under a memory limit.

Why: ``random:K`` with ``head_scores`` once exhausted 24 GB before the model loaded (the pre-load syntax check
resolved the spec against a made-up 10^9 x 10^9 model). A subprocess with an address-space limit turns such a
blow-up into a failed test.
"""

from __future__ import annotations

import json

import pytest
from conftest import rh_error_lines, run_cli

pytestmark = pytest.mark.slow  # every test here starts the stock lm_eval CLI

# tiny llama: 2 layers x 4 query heads; 1-2 is the one retrieval head of the score file below
FORMS = {
    "none": ("mask_heads=none", []),
    "explicit": ("mask_heads=0-1;1-3", [[0, 1], [1, 3]]),
    "top": ("mask_heads=top:2,head_scores={scores}", [[1, 2], [0, 3]]),
    "random": ("mask_heads=random:3,head_scores={scores},mask_seed=1", None),
    "random_layer": ("mask_heads=random:2,head_scores={scores},mask_seed=1,random_match=layer", None),
    "random_exclude": ("mask_heads=random:5,head_scores={scores},mask_seed=2,random_exclude=3", None),
}


@pytest.fixture(scope="module")
def score_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scores") / "scores.json"
    values = {(1, 2): 0.9, (0, 3): 0.05, (1, 0): 0.04}
    path.write_text(json.dumps({f"{l}-{h}": [values.get((l, h), 0.0)] for l in range(2) for h in range(4)}))
    return path


@pytest.mark.parametrize("form", list(FORMS))
def test_mask_form_runs_from_the_stock_cli_in_bounded_memory(form, tiny_llama_dir, tiny_task_dir, score_file, tmp_path):
    model_args, expected = FORMS[form]
    model_args = f"pretrained={tiny_llama_dir},dtype=float32," + model_args.format(scores=score_file)
    result = run_cli("lm_eval", "--model", "rh-hf", "--model_args", model_args, "--tasks", "tiny_local",
                     "--include_path", str(tiny_task_dir), "--output_path", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    mask = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["config"]["rh_mask"]
    heads = [tuple(h) for h in mask["heads"]]
    if expected is not None:
        assert mask["heads"] == expected
    elif form == "random":
        assert len(heads) == 3 and (1, 2) not in heads  # the retrieval head (mean > 0.1) is never drawn
    elif form == "random_layer":
        assert sorted(layer for layer, _ in heads) == [0, 1] and (1, 2) not in heads
    else:
        assert len(heads) == 5 and not {(1, 2), (0, 3), (1, 0)} & set(heads)


def test_bad_random_match_is_refused_before_the_model_loads(tiny_llama_dir, tiny_task_dir, score_file):
    result = run_cli("lm_eval", "--model", "rh-hf", "--model_args",
                     f"pretrained={tiny_llama_dir},mask_heads=random:2,head_scores={score_file},random_match=head",
                     "--tasks", "tiny_local", "--include_path", str(tiny_task_dir))
    assert result.returncode != 0
    errors = rh_error_lines(result.stderr)
    assert len(errors) == 1 and "random_match='head' is not supported" in errors[0], result.stderr[-1500:]
    assert "Loading weights" not in result.stderr and "Traceback" not in result.stderr


def test_record_and_prefix_reuse_args_from_the_stock_cli(tiny_llama_dir, tmp_path):
    """``record_min_score`` (the task's own metric decides) and ``prefix_reuse`` as a user types them."""
    scores = tmp_path / "s.json"
    result = run_cli("lm_eval", "--model", "rh-hf", "--model_args",
                     f"pretrained={tiny_llama_dir},record_scores={scores},record_min_score=-1,prefix_reuse=true",
                     "--tasks", "rh_niah", "--metadata", '{"lengths": [150], "depths": [0, 100], "samples": 1}',
                     "--gen_kwargs", "max_gen_toks=3")
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads(scores.with_suffix(".meta.json").read_text())
    assert meta["min_score"] == -1 and meta["tests_seen"] == meta["tests_contributing"] == 2
    assert meta["labels"]["length"] == [150] and meta["labels"]["depth"] == [0, 100]
    bad = run_cli("lm_eval", "--model", "rh-hf", "--model_args", f"pretrained={tiny_llama_dir},prefix_reuse=maybe",
                  "--tasks", "rh_niah")
    assert bad.returncode != 0 and "Loading weights" not in bad.stderr  # refused before the model loads
    assert rh_error_lines(bad.stderr) == ["rh-eval: error: prefix_reuse must be true or false, "
                                                                  "got 'maybe'"], bad.stderr[-1500:]

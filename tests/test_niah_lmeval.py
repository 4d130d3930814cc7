"""rh_niah through lm-eval: task loading, HFLM truncation path, chat template, stock CLI end to end, bad metadata."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from rh_eval.plots.niah import niah_cells
from rh_models.errors import RHError
from rh_models.zoo import resolve_pretrained



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random llama with SmolLM2's tokenizer (and chat template), 2048 positions."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hflm(tiny_model):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model), batch_size=1, device="cpu")


def _load(metadata: dict, name: str = "rh_niah"):
    from lm_eval.tasks import TaskManager

    loaded = TaskManager(include_defaults=False, metadata=metadata).load([name])
    return loaded["tasks"]


def test_group_and_variants_are_found_and_sized_for_the_model(tiny_model):
    meta = {"pretrained": str(tiny_model), "lengths": [600], "depths": [0, 100], "samples": 1}
    tasks = _load(meta)
    assert list(tasks) == ["rh_niah_paper"]
    task = tasks["rh_niah_paper"]
    assert len(task.eval_docs) == 2
    assert {"score", "score_len_600", "score_depth_000", "score_depth_100"} <= set(task.aggregation())
    variants = _load(meta, "rh_niah_variants")
    assert sorted(variants) == ["rh_niah_kv", "rh_niah_multikey", "rh_niah_multiquery", "rh_niah_multivalue"]
    assert variants["rh_niah_multivalue"].config.generation_kwargs["max_gen_toks"] == 64
    assert len(variants["rh_niah_multivalue"].eval_docs[0]["rh_answers"]) == 4


@pytest.mark.parametrize("chat", [False, True])
def test_final_contexts_survive_hflm_left_truncation(tiny_model, hflm, chat):
    """The longest length that fits 2048 positions: the context lm-eval builds still holds the whole needle."""
    task = _load({"pretrained": str(tiny_model), "lengths": [1900], "depths": [0, 100], "samples": 1})["rh_niah_paper"]
    task.build_all_requests(apply_chat_template=chat, chat_template=hflm.apply_chat_template if chat else None)
    assert len(task.instances) == 2
    for instance in task.instances:
        context, gen_kwargs = instance.arguments[0], instance.arguments[1]
        assert context.startswith("<|im_start|>") == chat
        assert context.endswith(instance.doc["gen_prefix"])
        limit = hflm.max_length - gen_kwargs["max_gen_toks"]
        ids, _ = hflm.tok_batch_encode([context], left_truncate_len=limit)
        full = hflm.tok_batch_encode([context])[0]
        assert ids.shape[1] == full.shape[1] <= limit  # nothing was cut
        kept = hflm.tok_decode(ids[0].tolist(), skip_special_tokens=False)
        for needle in instance.doc["rh_needles"]:
            assert kept.count(needle) == 1


def test_larger_generation_budget_is_refused_instead_of_cutting(tiny_model):
    task = _load({"pretrained": str(tiny_model), "lengths": [1900], "depths": [50], "samples": 1})["rh_niah_paper"]
    task.set_config("generation_kwargs", {"max_gen_toks": 400}, update=True)
    with pytest.raises(RHError, match="would cut the needle"):
        task.build_all_requests()


@pytest.mark.parametrize("metadata,message", [
    ({"lengths": [600], "depths": [0, 150]}, "within 0..100"),
    ({"lengths": [-1000]}, "must be positive"),
    ({"lengths": [4000]}, "does not fit"),
    ({"lenghts": [600]}, "did you mean 'lengths'"),
])
def test_bad_metadata_raises_rherror(tiny_model, metadata, message):
    with pytest.raises(RHError, match=message):
        _load({"pretrained": str(tiny_model), **metadata})


def _lm_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("lm_eval", *args, cwd=cwd)


@pytest.mark.slow
def test_stock_cli_end_to_end(tiny_model, tmp_path):
    metadata = {"lengths": [500, 800], "depths": [0, 100], "samples": 1, "cell_metrics": True}
    done = _lm_eval("--model", "hf", "--model_args", f"pretrained={tiny_model}", "--tasks", "rh_niah",
                    "--metadata", json.dumps(metadata), "--limit", "3", "--output_path", str(tmp_path / "out"),
                    "--log_samples", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "score_len_500" in done.stdout and "score_depth_100" in done.stdout  # breakdown in the printed table
    assert "Left truncation" not in done.stderr
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    paper = results["results"]["rh_niah_paper"]
    assert paper["sample_len"] == 3 and 0.0 <= paper["score,none"] <= 1.0
    assert {"score_len_500,none", "score_depth_000,none", "score_cell_500_000,none"} <= set(paper)
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_rh_niah_paper_*.jsonl")).open()]
    assert [s["doc"]["cell"] for s in samples] == ["500-0", "500-100", "800-0"]
    assert all(isinstance(s["score"], float) for s in samples)
    assert set(niah_cells(tmp_path / "out")) == {(500, 0), (500, 100), (800, 0)}


@pytest.mark.slow
def test_stock_cli_bad_metadata_prints_one_line(tiny_model, tmp_path):
    done = _lm_eval("--model", "dummy", "--tasks", "rh_niah_kv", "--metadata",
                    json.dumps({"tokenizer": str(tiny_model), "lengths": [500], "depths": [0, 150]}), cwd=tmp_path)
    assert done.returncode != 0
    assert "rh-eval: error: NIAH depths are percentages and must be within 0..100, got 150" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_condition_reuses_one_tokenizer_and_its_tokenized_haystack(tiny_model):
    """rh compare / rh demo rebuild the task once per condition: the tokenizer (and the haystack tokenized with it,
    cached per tokenizer) must come back from the cache, not be loaded and tokenized again each time."""
    from rh_tasks.niah import docs_from_metadata

    meta = {"pretrained": str(tiny_model), "lengths": [300], "depths": [50], "samples": 1}
    first, tokenizer, _ = docs_from_metadata(**meta)
    again, same_tokenizer, _ = docs_from_metadata(**meta)
    assert same_tokenizer is tokenizer and [d["prompt"] for d in again] == [d["prompt"] for d in first]

"""benchmarks/peers.py: its pure helpers; its recording contenders agree on a tiny llama; and, where the peers are
installed (``make setup-peers``, its own venv), every masking contender equals an explicit reference.

The peers (nnsight, TransformerLens) are not dependencies of rh-eval, so in the main venv the last test is skipped
with the reason; the benchmark itself (minutes on SmolLM2) is never run here.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers = _load_peers()


class _Words:
    """A tokenizer stand-in: id i is the word ``w<i>``; id 0 is a special token."""

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(f"w{i}" for i in ids if not (skip_special_tokens and i == 0))


def test_continuation_text_is_what_generate_until_returns():
    assert peers.continuation_text(_Words(), [5, 0, 7, 2, 9], eos_id=2) == "w5 w7"  # cut at EOS, specials dropped
    assert peers.continuation_text(_Words(), [5, 7], eos_id=2) == "w5 w7"


def test_head_columns_are_each_heads_slice_of_the_output_projection_input():
    assert peers.head_columns({3: [2, 0], 1: [1]}, head_dim=2) == {1: [2, 3], 3: [4, 5, 0, 1]}


def test_top1_agreement_stops_after_the_first_step_whose_token_differs():
    ours = torch.zeros(4, 2, 3, dtype=torch.long)
    theirs = ours.clone()
    theirs[1, 0, 0] = 7  # a disagreement on a step both ran on the same tokens: counted
    theirs[3] = 9  # after the generations diverged at step 2: not compared
    assert peers.top1_agreement(ours, theirs, [1, 2, 3, 4], [1, 2, 5, 4]) == (17, 18)
    assert peers.top1_agreement(ours, ours, [1, 2, 3, 4], [1, 2, 3, 4]) == (24, 24)


def test_bench_peers_recipe_is_the_readme_command():
    import re

    makefile = (ROOT / "Makefile").read_text()
    recipe = dict(re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, re.M))
    command = "benchmarks/peers.py --threads 1 --output benchmarks/results/peers-smollm2-135m_cpu-2core.json"
    assert recipe["bench-peers"].strip() == f"$(OFFLINE) $(PPY) {command}"
    assert f".venv-peers/bin/python {command}" in (ROOT / "docs" / "performance.md").read_text()
    assert re.search(r"^bench-peers: setup-peers$", makefile, re.M) and "EXTRAS_PEERS := peers,test" in makefile


def test_ratio_summary_is_median_and_range_of_per_repeat_ratios():
    assert peers.ratio_summary([2.0, 3.0, 8.0], [1.0, 2.0, 2.0]) == {"median": 2.0, "min": 1.5, "max": 4.0}


@pytest.fixture(scope="module")
def work(tmp_path_factory, smollm_dir):
    """The benchmark's workload on a tiny random llama (GQA: 4 query heads, 2 KV heads) with SmolLM2's tokenizer.

    Weights drawn wider than the default init, so that zeroing three of its eight heads changes what it generates.
    """
    import transformers

    path = tmp_path_factory.mktemp("peers-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=49152, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        initializer_range=0.3,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(smollm_dir).save_pretrained(path)
    work = peers.Workload(str(path), "0-1;1-0;1-1", lengths=[200], depths=[0, 100], new_tokens=6)
    yield work
    shutil.rmtree(work.scratch, ignore_errors=True)


@pytest.mark.smollm
def test_recorded_top1_positions_equal_eager_output_attentions(work):
    eager = work.contender("eager output_attentions")
    recorder = work.contender("rh-hf record_scores")
    for doc in work.docs:
        theirs = eager(doc)
        ours, ours_ids = recorder.positions(doc)
        assert ours_ids == theirs["ids"] and len(ours_ids) == 6
        assert peers.top1_agreement(ours, theirs["positions"], ours_ids, theirs["ids"]) == (6 * 2 * 4,) * 2
        assert recorder(doc)["text"] == theirs["text"]  # the record_scores path generates the same answer


def _reference(work, doc) -> str:
    """The masked model written out: the heads' columns of each o_proj weight set to zero, then stock generate."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(work.path).eval()
    with torch.no_grad():
        for layer, columns in peers.head_columns(work.heads.by_layer(), work.head_dim).items():
            model.model.layers[layer].self_attn.o_proj.weight[:, columns] = 0
        ids = torch.tensor([doc["ids"]])
        out = model.generate(ids, max_new_tokens=work.new_tokens, do_sample=False, eos_token_id=work.eos,
                             pad_token_id=work.eos)
    return work.text(out[0, ids.shape[1]:].tolist())


@pytest.mark.smollm
def test_every_masking_contender_equals_the_zeroed_weights_reference(work):
    pytest.importorskip("nnsight", reason="the peers are not rh-eval dependencies: run in .venv-peers (make setup-peers)")
    pytest.importorskip("transformer_lens", reason="the peers are not rh-eval dependencies: run in .venv-peers "
                                                   "(make setup-peers)")
    assert peers.transformer_lens_refusal(work) is None
    unmasked = work.contender("rh-hf record_scores")
    changed = 0
    for doc in work.docs:
        expected = _reference(work, doc)
        for name in peers.MASKING:
            assert work.contender(name)(doc)["text"] == expected, name
        changed += unmasked(doc)["text"] != expected
    assert changed, "the mask changed no generation: the comparison would be vacuous"

"""The attention-mass scores (attention, induction, echo) against an explicit eager reference, and `rh detect --score`.

The reference is the stock model with ``attn_implementation="eager"`` and ``output_attentions=True``: its full
attention maps, from which each score is computed by its definition (docs/scores.md). Ours reads only the rows it
needs, through the observer of step 1 of the registered attention function, on an sdpa model. Architectures: every
tiny model of conftest (GQA: llama, qwen, gemma; one KV head and a 6-token sliding layer: gemma3) and a mistral
whose every layer slides over 12 tokens (the needle is out of its question's reach; echo's target, 12 tokens back, too;
induction's, 11 back, within it).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import ARCHITECTURES, TINY_CONFIGS, VOCAB, tiny_model

from rh_models import observers
from rh_models.attention import HeadControl
from rh_models.compat import cache_kwarg
from rh_models.errors import RHError
from rh_models.heads import HeadScores, HeadSet
from rh_models.mass_scores import MassTest, measure, question_test, repeat_tests, token_candidates
from rh_models.observers import TargetMass

SLIDING_MISTRAL = "mistral-window12"
MASS_ARCHITECTURES = [*ARCHITECTURES, SLIDING_MISTRAL]
REPEAT = 12  # tokens per copy: a window of 12 sees the induction target (11 back), not the echo one (12 back)
LENGTH = 1 + 2 * REPEAT  # a start token, then the copies


def _model(arch: str, attn_implementation: str = "sdpa"):
    if arch != SLIDING_MISTRAL:
        return tiny_model(arch, attn_implementation)
    torch.manual_seed(0)
    config = transformers.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, sliding_window=12, vocab_size=VOCAB,
                                        max_position_embeddings=256)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                         dtype=torch.float32).eval()


def _eager_maps(arch: str, ids: torch.Tensor) -> torch.Tensor:
    """(batch, layers, heads, q, k): the stock eager model's attention maps."""
    with torch.no_grad():
        attentions = _model(arch, "eager")(ids, output_attentions=True).attentions
    return torch.stack(attentions, dim=1)


def _needle_test(tokenizer) -> tuple[dict, MassTest]:
    from rh_tasks.niah_docs import build_docs

    [doc] = build_docs(tokenizer, lengths=[150], depths=[50], samples=1, max_length=256, max_gen_toks=4)
    return doc, question_test(tokenizer, [1] + tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"], doc)


@pytest.fixture(scope="module")
def smollm_tokenizer(smollm_dir):
    return transformers.AutoTokenizer.from_pretrained(smollm_dir)


def test_question_test_reads_the_rows_after_the_haystack_onto_the_needle(smollm_tokenizer):
    tokenizer = smollm_tokenizer
    doc, test = _needle_test(tokenizer)
    question, null = test.ids.tolist()
    assert test.calibrated and len(question) == len(null) and question[0] == 1  # the start token kept in place
    needle = test.targets[0].nonzero().flatten().tolist()
    assert (test.targets == test.targets[0]).all()  # every question row targets the same needle tokens
    assert doc["rh_needles"][0].strip(" .") in tokenizer.decode([question[i] for i in needle])
    assert tokenizer.decode(question[int(test.rows[0]):]).strip() == doc["prompt"][doc["hay_end"]:].strip()
    assert test.rows.tolist() == list(range(int(test.rows[0]), len(question)))  # every token to the prompt's end
    changed = [i for i, (a, b) in enumerate(zip(question, null)) if a != b]
    assert tokenizer.decode([question[i] for i in changed]).strip() == doc["question"].strip()
    nulls = tokenizer.decode([null[i] for i in changed])
    assert nulls.startswith("N/AN/A") and ("N/A" * len(changed)).startswith(nulls)  # "N/A" cycled over the question
    assert min(changed) > max(needle) and min(changed) >= int(test.rows[0])


def test_repeat_tests_are_distinct_random_tokens_repeated_twice():
    candidates = torch.arange(3, VOCAB)
    induction = repeat_tests(candidates, [1], LENGTH, samples=3, seed=4, score="induction")
    echo = repeat_tests(candidates, [1], LENGTH, samples=3, seed=4, score="echo")
    assert torch.equal(induction.ids, echo.ids) and induction.ids.shape == (3, 1 + 2 * REPEAT)
    for row in induction.ids:
        first, second = row[1 : 1 + REPEAT], row[1 + REPEAT :]
        assert row[0] == 1 and torch.equal(first, second) and len(set(first.tolist())) == REPEAT and first.min() >= 3
    assert not torch.equal(induction.ids, repeat_tests(candidates, [1], LENGTH, 3, seed=5, score="echo").ids)
    assert repeat_tests(candidates, [1], LENGTH + 1, 1, 0, "echo").ids.shape == (1, LENGTH)  # at most the length
    for test, shift in ((induction, 1), (echo, 0)):  # row p targets p - REPEAT + 1 (induction) or p - REPEAT (echo)
        assert [t.nonzero().item() for t in test.targets] == [p - REPEAT + shift for p in test.rows.tolist()]
    with pytest.raises(RHError, match="holds 128 distinct tokens twice; it needs 2 .. 125"):
        repeat_tests(candidates, [1], 2 * VOCAB + 1, 1, 0, "induction")


def test_token_candidates_leave_special_tokens_out(smollm_tokenizer):
    candidates = token_candidates(smollm_tokenizer, 49152).tolist()
    assert not set(smollm_tokenizer.all_special_ids) & set(candidates) and len(candidates) > 49000


@pytest.mark.parametrize("arch", MASS_ARCHITECTURES)
def test_every_mass_score_equals_the_eager_reference(arch, smollm_tokenizer, monkeypatch):
    """attention (question minus null question), induction and echo, each from the eager maps by its definition;
    the repeats' 12 rows also in blocks of 5 (the observer's row blocks: two full, a shorter last one)."""
    model = _model(arch)
    control = HeadControl.attach(model)

    _, needle = _needle_test(smollm_tokenizer)
    ids = needle.ids % (VOCAB - 3) + 3  # the same positions in the tiny vocabulary
    maps = _eager_maps(arch, ids)
    on_needle = maps[:, :, :, needle.rows][..., needle.targets[0]].sum(-1).mean(-1)  # (batch, layers, heads)
    expected = on_needle[:1] - on_needle[1:]
    for shared in (needle.shared, 0):  # rows continuing a cache of the prompt before them (as detection runs), or not
        test = MassTest(ids, needle.rows, needle.targets, calibrated=True, shared=shared)
        torch.testing.assert_close(measure(model, control, test), expected, rtol=1e-4, atol=1e-7)
    # the question moves where heads look, far beyond the tolerance; the all-sliding mistral's cannot see the needle
    assert expected.abs().max() > 1e-5 if arch != SLIDING_MISTRAL else not expected.any()

    for score, shift in (("induction", 1), ("echo", 0)):
        test = repeat_tests(torch.arange(3, VOCAB), [1], LENGTH, samples=2, seed=0, score=score)
        maps = _eager_maps(arch, test.ids)
        rows = torch.arange(1 + REPEAT, 1 + 2 * REPEAT)
        expected = maps[:, :, :, rows, rows - REPEAT + shift].mean(-1)  # weight on each row's target, averaged
        torch.testing.assert_close(measure(model, control, test), expected, rtol=1e-4, atol=1e-7)
        with monkeypatch.context() as patch:
            patch.setattr(observers, "ROW_BLOCK", 5)
            torch.testing.assert_close(measure(model, control, test), expected, rtol=1e-4, atol=1e-7)
        assert expected.max() > 1e-2 if (arch, score) != (SLIDING_MISTRAL, "echo") else not expected.any()


def test_the_observer_reads_a_masked_model_before_its_own_mask_and_only_a_prefill_that_ends_the_sequence():
    """Observers read the head's own pattern (module doc of rh_models.attention): masking the observed layer leaves
    its masses unchanged, masking an earlier layer changes them. A generation's decoding steps are passed over; a
    prefill that does not hold every row is refused, and so is a block in which no forward ran."""
    model = _model("llama")
    control = HeadControl.attach(model)
    test = repeat_tests(torch.arange(3, VOCAB), [1], LENGTH, samples=1, seed=0, score="induction")
    stock = measure(model, control, test)
    control.set_mask(HeadSet(((1, 0), (1, 2)), control.n_layers, control.n_heads), method="uniform")
    assert torch.equal(measure(model, control, test), stock)
    control.set_mask(HeadSet(((0, 1),), control.n_layers, control.n_heads), method="zero")
    masked = measure(model, control, test)
    assert torch.equal(masked[:, 0], stock[:, 0]) and not torch.equal(masked[:, 1], stock[:, 1])
    control.set_mask(HeadSet((), control.n_layers, control.n_heads))

    def observed(run) -> TargetMass:
        mass = TargetMass(test.rows, test.targets, LENGTH, control.n_layers)
        with torch.no_grad(), control.observing(mass):
            run()
        return mass

    def generate() -> None:  # a prefill, then decoding steps (as rh-hf's generate_until marks them)
        with control.generating(LENGTH):
            model.generate(test.ids, attention_mask=torch.ones_like(test.ids), max_new_tokens=3, min_new_tokens=3,
                           do_sample=False, pad_token_id=0)

    torch.testing.assert_close(observed(generate).result(), stock, rtol=1e-5, atol=1e-7)
    with pytest.raises(RHError, match="reads one prefill forward that ends the 25-token sequence"):
        observed(lambda: model(test.ids[:, :4], use_cache=False))
    with pytest.raises(RHError, match=r"read each layer \[0\] times"):
        observed(lambda: None).result()
    assert control.observers == []


def test_attention_score_with_prefix_reuse_is_the_same_as_without(tiny_llama_dir):
    """Detection continues each prompt from the hay an earlier prompt of its length cached (RHHFLM.cached_prompt)."""
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu")
    docs = build_docs(lm.tokenizer, lengths=[200], depths=[100, 50], samples=1, max_length=lm.max_length)
    tests = [question_test(lm.tokenizer, lm.tok_encode(doc["prompt"]), doc) for doc in docs]
    fresh = [measure(lm.model, lm.control, test) for test in tests]
    reused = [measure(lm.model, lm.control, test, lm.cached_prompt) for test in tests]
    assert lm.prefix_tokens_reused > 50  # the depth-50 prompt continued the hay before its needle
    for a, b in zip(reused, fresh):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("score", ["attention", "induction", "echo"])
def test_detect_writes_each_score_with_provenance_and_resumes(score, tiny_llama_dir, tmp_path, capsys):
    """`rh detect --score` through the CLI on the tiny llama: the paper's format, the score's provenance, a resume."""
    from rh_eval.cli import main
    from rh_eval.detect import work_file

    out = tmp_path / f"{score}.json"
    grid = ["--lengths", "150", "--depths", "0,100", "--samples", "1"] if score == "attention" else [
        "--lengths", "8,16", "--samples", "2"]
    argv = ["detect", "--model", str(tiny_llama_dir), "--score", score, "--output", str(out), *grid, "--device", "cpu"]
    assert main([*argv, "--plot", str(tmp_path / "heads.png")]) == 0
    printed = capsys.readouterr().out
    assert f"(score {score}: no generation, every test counts)" in printed and f"wrote {out}" in printed
    scores = HeadScores.load(out, 2, 4)
    tests = 2 if score == "attention" else 4
    assert all(len(values) == tests for values in scores.per_test.values())
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["score"]["name"] == score and meta["score"]["parameters"] and meta["tests_seen"] == tests
    assert meta["model"] == str(tiny_llama_dir) and len(meta["tests"]) == tests
    if score == "attention":
        assert meta["score"]["parameters"]["null_question"] == "N/A" and meta["depths"] == [0, 100]
        assert any(v < 0 for values in scores.per_test.values() for v in values)  # calibrated: below 0 happens
    else:
        assert meta["score"]["parameters"]["lengths"] == [8, 16] and meta["tests"][-1] == {"length": 16, "sample": 1}
        assert all(0 <= v <= 1 for values in scores.per_test.values() for v in values)
    assert (tmp_path / "heads.png").read_bytes()[:4] == b"\x89PNG"

    lines = work_file(out).read_text().splitlines()
    work_file(out).write_text("\n".join(lines[:2]) + "\n")  # as if killed after the first test key
    assert main(argv) == 0
    assert HeadScores.load(out, 2, 4).per_test == scores.per_test
    assert main([*argv[:-2], "--seed", "3"]) == 2  # other settings: refused, never mixed
    assert "other settings" in capsys.readouterr().err


def test_detect_refuses_options_a_score_does_not_read(capsys):
    from rh_eval.cli import main
    from rh_eval.detect import SCORES
    from rh_models.mass_scores import MASS_SCORES

    assert SCORES == ("copy", *MASS_SCORES)  # rh detect's --score choices: the copy score and every mass score

    assert main(["detect", "--score", "induction", "--output", "x.json", "--depths", "0,50"]) == 2
    assert "--score induction does not use --depths" in capsys.readouterr().err
    assert main(["detect", "--score", "attention", "--output", "x.json", "--max-gen-toks", "8", "--batch-cells"]) == 2
    assert "--score attention does not use --batch-cells, --max-gen-toks" in capsys.readouterr().err
    assert main(["detect", "--score", "attention", "--output", "x.json", "--min-score", "0"]) == 2  # 0 is given too
    assert "--score attention does not use --min-score" in capsys.readouterr().err


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("padding", [False, True])
def test_row_logits_under_flash_layouts_equal_an_explicit_causal_and_sliding_reference(window, padding):
    """Flash kernels get no 4-D mask: None (no padding) or a (batch, kv) padding mask, causal aligned bottom-right,
    and a sliding layer's window applied by the kernel itself. row_logits must place both, for any rows, also with
    fewer queries than keys (a prefill after a cached prefix), where transformers passes None too."""
    from rh_models.observers import row_logits

    torch.manual_seed(0)
    batch, heads, kv_heads, q_length, kv_length, dim = 2, 4, 2, 5, 9, 8
    query, key = torch.randn(batch, heads, q_length, dim), torch.randn(batch, kv_heads, kv_length, dim)
    mask = torch.ones(batch, kv_length, dtype=torch.long)
    if padding:
        mask[1, :2] = 0  # the second row left-padded by two keys
    rows = torch.tensor([4, 0, 2])
    kwargs = {"scaling": 0.5, "sliding_window": window}
    got = row_logits(torch.nn.Identity(), query, key, mask if padding else None, kwargs, rows)

    expanded = key.repeat_interleave(heads // kv_heads, dim=1)
    for b in range(batch):
        for i, row in enumerate(rows.tolist()):
            own = row + kv_length - q_length
            for k in range(kv_length):
                seen = k <= own and (window is None or k > own - window) and bool(mask[b, k] or not padding)
                logit = (query[b, :, row] * expanded[b, :, k]).sum(-1) * 0.5
                if k < got.shape[-1]:
                    expected = logit if seen else torch.full_like(logit, float("-inf"))
                    torch.testing.assert_close(got[b, :, i, k], expected)
                else:
                    assert not seen, (b, row, k)  # a key past the computed width is one no row sees

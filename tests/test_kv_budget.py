"""KV budgets by head: exact against an explicit reference, bit-exact when nothing is evicted, and accounted.

The reference is written here from positions alone (left padding known, causal, the layer's own sliding window):
eager softmax over exactly the keys a head's cache holds. It never sees the mask transformers builds, so it
checks :func:`rh_models.kv_budget.visible_keys` / :func:`streaming_mask` rather than repeating them.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHITECTURES, rh_error_lines, run_cli, tiny_model
from lm_eval.api.instance import Instance
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from rh_models.attention import HeadControl, attention_modules
from rh_models.errors import RHError
from rh_models.heads import HeadSet
from rh_models.kv_budget import StreamingHeads, parse_kv_args, sliding_windows
from rh_models.shape import kv_heads_of

SINK, WINDOW = 3, 10
PROMPT = 40


def _reference_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    ref = module._kv_reference
    batch, n_heads, q_length, head_dim = query.shape
    groups = n_heads // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    n = key.shape[2]
    if scaling is None:
        scaling = getattr(module, "scaling", head_dim**-0.5)
    scores = (query @ key.transpose(-1, -2)).float() * scaling
    i = torch.arange(n - q_length, n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = torch.zeros(batch, n_heads, q_length, n, dtype=torch.bool)
    for row, pad in enumerate(ref["pads"]):
        sees = (j <= i) & (j >= pad)
        if ref["sliding"]:
            sees &= i - j < ref["sliding"]
        keeps = sees & ((j - pad < SINK) | (i - j < WINDOW))
        for head in range(n_heads):
            allowed[row, head] = sees if head in ref["full"] or ref["sliding"] else keeps
    blocked = torch.finfo(scores.dtype).min  # as eager: a padding query with no key left stays finite
    weights = torch.softmax(scores.masked_fill(~allowed, blocked), dim=-1).to(value.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), None


AttentionInterface.register("kv_reference", _reference_attention)
AttentionMaskInterface.register("kv_reference", ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def _selected(model) -> HeadSet:
    """Query head 0 of layer 0 and the last query head of the last layer: under GQA, whole groups become full."""
    control = model._rh_control
    return HeadSet(((0, 0), (control.n_layers - 1, control.n_heads - 1)), control.n_layers, control.n_heads)


def _streaming(model, selected: HeadSet, sink=SINK, window=WINDOW) -> StreamingHeads:
    control = model._rh_control
    return StreamingHeads(selected, sink, window, kv_heads_of(model.config),
                          sliding_windows(control.modules, model.config))


def _reference_model(arch: str, selected: HeadSet, pads: list[int]):
    model = tiny_model(arch, "eager")
    n_heads = selected.n_heads
    groups = n_heads // kv_heads_of(model.config)
    for layer, module in enumerate(attention_modules(model, selected.n_layers)):
        chosen = {head // groups for l, head in selected if l == layer}
        window = getattr(module, "sliding_window", None)
        module._kv_reference = {"pads": pads, "sliding": window,
                                "full": {h for h in range(n_heads) if h // groups in chosen}}
    model.set_attn_implementation("kv_reference")
    return model


def _batch(pads: list[int], length: int = PROMPT, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (len(pads), length), generator=generator)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


@pytest.fixture(params=["blocks", "one call"])
def streaming_path(request, monkeypatch):
    """Both ways a streaming head is computed: blocks of 8 queries over only their kept keys (the usual mask
    shape), and one masked call over every key (any other mask)."""
    import rh_models.attention

    if request.param == "blocks":
        monkeypatch.setattr(rh_models.attention, "BLOCK", 8)  # several blocks in a 40-token prompt
    else:
        monkeypatch.setattr(rh_models.attention.StreamingLayout, "of", classmethod(lambda cls, *a: None))
    return request.param


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_streaming_heads_equal_the_explicit_reference_in_prefill_and_decoding(arch, streaming_path):
    pads = [0, 6]
    ids, mask = _batch(pads)
    model = tiny_model(arch)
    control = HeadControl.attach(model)
    selected = _selected(model)
    control.set_kv(_streaming(model, selected))
    reference = _reference_model(arch, selected, pads)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
        tokens = ids
        for step, logits in enumerate(out.logits):  # the reference recomputes every step from scratch, no cache
            full_mask = torch.cat([mask, torch.ones(len(pads), step, dtype=mask.dtype)], dim=1)
            positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)  # as generate() places them
            expected = reference(tokens, attention_mask=full_mask, position_ids=positions).logits[:, -1]
            torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-4)
            tokens = torch.cat([tokens, out.sequences[:, PROMPT + step : PROMPT + step + 1]], dim=1)
    assert out.sequences.shape[1] == PROMPT + 5


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_eager_base_attention_streams_like_sdpa(arch, streaming_path):
    ids, mask = _batch([0, 4])
    outputs = []
    for implementation in ("sdpa", "eager"):
        model = tiny_model(arch, implementation)
        HeadControl.attach(model).set_kv(_streaming(model, _selected(model)))
        with torch.no_grad():
            outputs.append(model(ids, attention_mask=mask).logits)
    real = mask.bool()  # padding positions attend to nothing real: their outputs are each kernel's own
    torch.testing.assert_close(outputs[0][real], outputs[1][real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_head_full_or_a_window_longer_than_the_context_is_bit_exact(arch):
    ids, mask = _batch([0, 5])
    model = tiny_model(arch)
    control = HeadControl.attach(model)
    with torch.no_grad():
        stock = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=0)
    every = HeadSet(tuple((l, h) for l in range(control.n_layers) for h in range(control.n_heads)),
                    control.n_layers, control.n_heads)
    none = HeadSet((), control.n_layers, control.n_heads)
    for streaming in (_streaming(model, every), _streaming(model, none, sink=4, window=PROMPT + 4)):
        control.set_kv(streaming)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=0)
        assert torch.equal(out.sequences, stock.sequences)
        assert all(torch.equal(a, b) for a, b in zip(out.logits, stock.logits))


def test_a_query_head_of_a_gqa_group_sees_what_its_kv_head_keeps():
    model = tiny_model("llama")  # 4 query heads over 2 KV heads
    control = HeadControl.attach(model)
    ids, mask = _batch([0, 3])
    one = HeadSet(((0, 1),), 2, 4)
    group = HeadSet(((0, 0), (0, 1)), 2, 4)
    logits = []
    for selected in (one, group):
        streaming = _streaming(model, selected)
        control.set_kv(streaming)
        with torch.no_grad():
            logits.append(model(ids, attention_mask=mask).logits)
    assert torch.equal(logits[0], logits[1])
    info = _streaming(model, one).info()
    assert info["selected_heads"] == [[0, 1]] and info["full_query_heads"] == [[0, 0], [0, 1]]
    assert info["full_kv_heads"] == {"0": [0]} and "2 query heads of those groups" in info["gqa_note"]


def test_budget_counts_kept_entries_per_kv_head_and_sliding_layers_keep_their_own_window():
    model = tiny_model("gemma3")  # layer 0 slides over 6 positions, layer 1 is full; 1 KV head
    control = HeadControl.attach(model)
    streaming = _streaming(model, HeadSet((), 2, 4), sink=2, window=8)
    assert streaming.sliding == {0: 6} and streaming.compressed_layers() == [1]
    assert streaming.entries(100) == (6 + 10, 6 + 100)  # sliding layer: its own 6; full layer: sink + window
    assert streaming.entries(5) == (10, 10)  # shorter than every window: nothing evicted
    streaming.count([100, 5])
    assert streaming.budget == pytest.approx(26 / 116)
    llama = tiny_model("llama")
    HeadControl.attach(llama)
    half = _streaming(llama, HeadSet(((0, 0), (1, 2)), 2, 4), sink=2, window=8)  # one of 2 KV heads full per layer
    assert half.entries(50) == (2 * (50 + 10), 2 * 2 * 50)


def test_a_model_whose_every_layer_slides_is_refused():
    model = tiny_model("gemma3")
    HeadControl.attach(model)
    with pytest.raises(RHError, match="already keeps only a sliding window"):
        StreamingHeads(HeadSet((), 2, 4), 2, 8, 1, {0: 6, 1: 6})
    import transformers

    torch.manual_seed(0)  # Mistral v0.1 and Phi-3 pass config.sliding_window to every layer (no per-layer attribute)
    for config in (transformers.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                              sliding_window=8),
                   transformers.Phi3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=4, vocab_size=128,
                                           pad_token_id=0, sliding_window=8)):
        sliding = transformers.AutoModelForCausalLM.from_config(config)
        control = HeadControl.attach(sliding)
        assert sliding_windows(control.modules, sliding.config) == {0: 8, 1: 8}
        with pytest.raises(RHError, match="already keeps only a sliding window"):
            _streaming(sliding, HeadSet((), 2, 4))


def test_an_unpadded_batch_after_a_padded_one_of_the_same_shape_gets_its_own_layout():
    """The layout is cached per forward; a None mask must never reuse a freed padded mask's layout."""
    model = tiny_model("llama")
    control = HeadControl.attach(model)
    control.set_kv(_streaming(model, HeadSet((), 2, 4), sink=2, window=4))
    padded_ids, padded_mask = _batch([0, 5])
    plain_ids, plain_mask = _batch([0, 0], seed=2)
    with torch.no_grad():
        model(padded_ids, attention_mask=padded_mask)
        after_padded = model(plain_ids, attention_mask=plain_mask).logits
        control._streaming_masks = None
        fresh = model(plain_ids, attention_mask=plain_mask).logits
    assert torch.equal(after_padded, fresh)


def test_kv_args_are_checked_before_a_model_loads(tmp_path):
    assert parse_kv_args(None).spec is None
    for orphan in (dict(kv_sink=2), dict(kv_window=16)):  # would change nothing: refused, not ignored
        with pytest.raises(RHError, match="without kv_full_heads changes nothing"):
            parse_kv_args(**orphan)
    assert parse_kv_args("none").spec.kind == "none"
    scores = tmp_path / "s.json"  # top:10% of 10 heads is 1: the file ranks it
    scores.write_text(json.dumps({f"0-{h}": [0.5 if h == 3 else 0.0] for h in range(10)}))
    assert parse_kv_args("top:10%", head_scores=str(scores)).spec.share == 10
    for bad, message in [(dict(kv_full_heads="top:10%"), "needs head_scores"),
                         (dict(kv_full_heads="top:0%"), "percentage in"),
                         (dict(kv_full_heads="top:150%"), "percentage in"),
                         (dict(kv_full_heads="none", kv_window=0), "kv_window"),
                         (dict(kv_full_heads="none", kv_sink=-1), "kv_sink")]:
        with pytest.raises(RHError, match=message):
            parse_kv_args(**bad)


def _few_scored(tmp_path):
    """The tiny llama's 8 heads, of which only 1-2 scored above 0 (the others: tests ran, every score 0)."""
    path = tmp_path / "few.json"
    path.write_text(json.dumps({f"{l}-{h}": [0.9 if (l, h) == (1, 2) else 0.0] for l in range(2) for h in range(4)}))
    return path


def test_a_kv_share_past_the_scored_heads_is_refused_before_a_model_loads(tmp_path):
    few = str(_few_scored(tmp_path))
    with pytest.raises(RHError, match=r"top:50%: 4 heads asked for, but only 1 of 8 heads scored above 0") as info:
        parse_kv_args("top:50%", head_scores=few)
    assert "\n" not in str(info.value)
    assert parse_kv_args("top:50%", head_scores=few, tie_break="random").spec.share == 50
    assert parse_kv_args("random:50%", head_scores=few).spec.kind == "random"  # a random ranking reads no scores
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({f"{l}-{h}": [] for l in range(2) for h in range(4)}))
    with pytest.raises(RHError, match="ranks no head: no test contributed"):
        parse_kv_args("top:10%", head_scores=str(empty))
    assert parse_kv_args("top:10%", head_scores=str(empty), tie_break="random").spec.share == 10  # all drawn


def test_rh_hf_records_the_tie_rule_of_its_kv_ranking_and_mask(tiny_llama_dir, tmp_path):
    from rh_models.lm import RHHFLM

    few = str(_few_scored(tmp_path))
    with pytest.raises(RHError, match="4 heads asked for, but only 1 of 8"):  # refused before the model loads
        RHHFLM(pretrained=str(tmp_path / "no-model-here"), head_scores=few, kv_full_heads="top:50%")
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", head_scores=few, kv_full_heads="top:50%",
                tie_break="random", mask_seed=3, kv_window=8)
    info = lm.get_model_info()["rh_kv"]
    assert (info["tie_break"], info["unscored_heads"]) == ("random", 3) and info["selected_heads"][0] == [1, 2]
    assert len({tuple(h) for h in info["selected_heads"]}) == 4
    lm.set_kv("top:1", window=8)
    assert (lm.kv_info()["tie_break"], lm.kv_info()["unscored_heads"]) == ("none", 0)
    with pytest.raises(RHError, match="2 heads asked for, but only 1 of 8"):
        lm.set_kv("top:2", window=8)
    lm.set_kv(None)
    lm.set_mask("top:2", tie_break="random", seed=1)
    assert (lm.mask_info()["tie_break"], lm.mask_info()["unscored_heads"]) == ("random", 1)


def _instances(docs: list[str]) -> list[Instance]:
    return [Instance("generate_until", {"i": i}, (doc, {"until": ["\n\n"], "max_gen_toks": 5}), i,
                     metadata=("t", i, 1)) for i, doc in enumerate(docs)]


def test_layout_of_the_usual_masks_and_none_for_a_gap():
    from rh_models.kv_budget import StreamingLayout

    cpu = torch.device("cpu")
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    padded = causal.clone()[None, None].repeat(2, 1, 1, 1)
    padded[1, :, :, :3] = False  # row 1: three left pads
    layout = StreamingLayout.of(padded, 2, 10, 10, cpu)
    assert layout.first.tolist() == [0, 3] and layout.rank[1].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    columns, allowed = layout.block(6, 10, sink=2, window=2)  # queries 6..9: sinks and keys 5..9
    assert columns.tolist() == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert allowed[1, 0, 0].tolist() == [False, False, True, True, True, True, False, False, False]  # query 6 of row 1
    gap = padded.clone()
    gap[0, :, 5:, 2] = False  # a hole in the middle of row 0's keys
    assert StreamingLayout.of(gap, 2, 10, 10, cpu) is None
    assert StreamingLayout.of(None, 1, 1, 10, cpu).query_index.tolist() == [9]


def test_rh_hf_budget_with_batches_and_prefix_reuse_equals_fresh_prefills(tiny_llama_dir):
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1, dtype="float32",
                kv_full_heads="0-1", kv_sink=4, kv_window=16)
    assert lm.kv_info()["full_query_heads"] == [[0, 0], [0, 1]] and lm.kv_info()["kv_budget"] is None
    hay = " ".join(f"item {i} is number {i * 7}." for i in range(30))
    docs = [f"{hay} Question {q}: what is item {q}?" for q in (3, 11, 20, 27)]
    fresh = [lm.generate_until(_instances([doc]), disable_tqdm=True)[0] for doc in docs]
    budget = lm.kv_info()["kv_budget"]
    # layer 0 keeps 1 of its 2 KV heads whole, layer 1 none: (T + 3 * 20) / 4T of ~200-token sequences
    assert 0.25 < budget < 0.4 and lm.kv_info()["sequences"] == 4
    lm.prefix_reuse = True
    with lm.settings(batch_size=2):
        reused = lm.generate_until(_instances(docs), disable_tqdm=True)
    assert reused == fresh and lm.prefix_tokens_reused > 100
    lm.set_kv(None)
    assert lm.kv_info() is None and "rh_kv" not in lm.get_model_info() and lm.prefix.cached == []
    streaming = lm.set_kv("none", sink=4, window=16)
    assert streaming.full_query_heads() == [] and lm.kv_info()["sequences"] == 0  # accounting starts afresh
    lm.generate_until(_instances(docs[:1]), disable_tqdm=True)
    info = lm.get_model_info()["rh_kv"]
    assert info["full_heads"] == "none" and 0 < info["kv_budget"] < budget / 2


def test_recording_and_kv_budget_are_refused_together(tiny_llama_dir, tmp_path):
    from rh_models.lm import RHHFLM

    with pytest.raises(RHError, match="record_scores cannot be combined with kv_full_heads"):
        RHHFLM(pretrained=str(tiny_llama_dir), record_scores=str(tmp_path / "s.json"), kv_full_heads="none")
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", kv_full_heads="none", kv_window=8)
    with pytest.raises(RHError, match="under a KV budget is not supported"):
        lm.control.start_recording()


KV_FORMS = {
    # top 25 % of 8 heads = 2: 1-2 then 0-3; their KV heads keep the whole GQA groups full
    "share_with_mask": ("mask_heads=0-1,kv_full_heads=top:25%,head_scores={scores},kv_sink=2,kv_window=8",
                        [[1, 2], [0, 3]]),
    "random": ("kv_full_heads=random:1,head_scores={scores},mask_seed=3,random_exclude=0,kv_window=8", None),
    "none": ("kv_full_heads=none,kv_window=8", []),
}


@pytest.mark.slow
@pytest.mark.parametrize("form", list(KV_FORMS))
def test_kv_form_runs_from_the_stock_cli_in_bounded_memory(form, tiny_llama_dir, tiny_task_dir, tmp_path):
    scores = tmp_path / "scores.json"
    values = {(1, 2): 0.9, (0, 3): 0.05}
    scores.write_text(json.dumps({f"{l}-{h}": [values.get((l, h), 0.0)] for l in range(2) for h in range(4)}))
    model_args, selected = KV_FORMS[form]
    result = run_cli("lm_eval", "--model", "rh-hf", "--model_args",
                     f"pretrained={tiny_llama_dir},dtype=float32," + model_args.format(scores=scores),
                     "--tasks", "tiny_local", "--include_path", str(tiny_task_dir), "--output_path", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads(next((tmp_path / "o").rglob("results_*.json")).read_text())["config"]
    kv = config["rh_kv"]
    assert kv["sequences"] == 2 and 0 < kv["kv_budget"] <= 1 and kv["window"] == 8
    if selected is not None:
        assert kv["selected_heads"] == selected
    if form == "share_with_mask":
        assert config["rh_mask"]["heads"] == [[0, 1]] and kv["sink"] == 2
        assert sorted(kv["full_query_heads"]) == [[0, 2], [0, 3], [1, 2], [1, 3]]
    if form == "random":
        assert len(kv["selected_heads"]) == 1
    bad = run_cli("lm_eval", "--model", "rh-hf", "--model_args", f"pretrained={tiny_llama_dir},kv_full_heads=top:5",
                  "--tasks", "tiny_local", "--include_path", str(tiny_task_dir)) if form == "none" else None
    if bad is not None:
        assert bad.returncode != 0 and "Loading weights" not in bad.stderr
        assert rh_error_lines(bad.stderr) == ["rh-eval: error: kv_full_heads=top:5 needs head_scores=PATH (a score "
                                              "file from `rh detect`)"], bad.stderr[-1500:]


def test_observing_and_a_kv_budget_refuse_each_other_in_either_order():
    """A streaming head's row would be read over keys its cache no longer holds: never both at once."""
    model = tiny_model("llama", "sdpa")
    control = HeadControl.attach(model)
    control.set_kv(_streaming(model, _selected(model)))
    with pytest.raises(RHError, match="observing attention rows under a KV budget is not supported"):
        control.start_recording()
    control.set_kv(None)
    control.start_recording()
    with pytest.raises(RHError, match="a KV budget cannot start while attention rows are observed"):
        control.set_kv(_streaming(model, _selected(model)))
    control.stop_recording()
    control.set_kv(_streaming(model, _selected(model)))  # once the rows are no longer observed

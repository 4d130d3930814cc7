"""Prefix reuse with a cell's needles batched: the same generations and the same recorded top-1 positions as
prefilling every prompt alone from scratch."""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.api.instance import Instance

from rh_models.prefix_cache import MIN_RECOMPUTED, WAVE_GAIN


WINDOW = 24  # the tiny sliding-window models' window: far shorter than the 160-token prompts


@pytest.fixture(scope="module")
def tiny_sliding_dirs(tmp_path_factory, smollm_dir) -> dict[str, str]:
    """Tiny random sliding-window models saved with SmolLM2's tokenizer: Gemma-3 (sliding and global layers,
    one KV head) and Mistral v0.1 (every layer slides); what transformers' own cache keeps only a window of."""
    import transformers

    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=49152, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    configs = {
        "gemma3": transformers.Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=WINDOW,
                                                layer_types=["sliding_attention", "full_attention"], **small),
        "mistral": transformers.MistralConfig(num_key_value_heads=2, sliding_window=WINDOW, **small),
    }
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm_dir)
    dirs = {}
    for arch, config in configs.items():
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch] = str(path)
    return dirs


@pytest.fixture(params=["llama", "gemma3", "mistral"])
def lm_and_cells(request, tiny_llama_dir, tmp_path):
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    if request.param == "llama":
        pretrained = str(tiny_llama_dir)
    else:
        pretrained = request.getfixturevalue("tiny_sliding_dirs")[request.param]
    lm = RHHFLM(pretrained=pretrained, device="cpu", batch_size=1)
    docs = build_docs(lm.tokenizer, lengths=[160], depths=[100, 50, 0], samples=3, max_length=lm.max_length)
    cells = [[d for d in docs if d["depth"] == depth] for depth in (100, 50, 0)]
    with lm.settings(recorder=lm.new_recorder(tmp_path / "s.json")):
        yield lm, cells


def _run(lm, docs: list[dict], captured: dict) -> list[str]:
    """Generate ``docs`` as one batch; capture each prompt's recorded top-1 positions, as unpadded indices."""
    original = lm.recorder.observe

    def capture(contexts, requests, context_ids, attention_mask, output_ids, rows):
        top1 = rows.absolute(context_ids.shape[1])  # (steps, batch, layers, heads), padded-row indices
        for b, context in enumerate(contexts):
            pads = int(context_ids.shape[1] - attention_mask[b].sum())
            captured[context] = top1[:, b] - pads
        return original(contexts, requests, context_ids, attention_mask, output_ids, rows)

    lm.recorder.observe = capture
    instances = [Instance("generate_until", d, (d["prompt"], {"until": ["\n\n"], "max_gen_toks": 6}), i,
                          metadata=("t", i, 1)) for i, d in enumerate(docs)]
    try:
        with lm.settings(batch_size=len(docs)):
            return lm.generate_until(instances, disable_tqdm=True)
    finally:
        lm.recorder.observe = original


def test_batched_cells_with_prefix_reuse_equal_single_fresh_prefills(lm_and_cells):
    """On a full-attention model and on two sliding-window ones, whose fresh prefills run transformers' own windowed
    cache while reuse keeps every key and lets the sliding mask window them: same answers, same top-1 positions."""
    from transformers import DynamicCache

    lm, cells = lm_and_cells
    sliding = DynamicCache(config=lm.model.config).is_sliding
    assert (True in sliding) == (lm.model.config.model_type != "llama")
    if True in sliding:  # the answers' steps attend past the window: its keys must be masked, not just kept
        assert min(len(lm.tok_encode(d["prompt"])) for cell in cells for d in cell) > 4 * WINDOW
    fresh_top1: dict[str, torch.Tensor] = {}
    fresh = [_run(lm, [doc], fresh_top1) for cell in cells for doc in cell]
    lm.prefix_reuse = True
    reused_top1: dict[str, torch.Tensor] = {}
    reused = [_run(lm, cell, reused_top1) for cell in cells]

    assert [answer for cell in reused for answer in cell] == [answer for answers in fresh for answer in answers]
    # depth 100 starts cold; depth 50 and 0 rows take the hay before their needle (minus their own padding)
    assert lm.prefix_tokens_reused > 2 * 40
    assert fresh_top1.keys() == reused_top1.keys()
    for context, positions in fresh_top1.items():
        steps = min(len(positions), len(reused_top1[context]))  # a batch decodes until its last row stops
        assert torch.equal(reused_top1[context][:steps], positions[:steps])


@pytest.mark.parametrize("lm_and_cells", ["llama"], indirect=True)
def test_each_row_reuses_its_longest_prefix_shared_with_a_prompt_already_cached(lm_and_cells):
    """Every row copies (nearly) the longest prefix it shares with the previous batch's prompts or an earlier row."""
    lm, cells = lm_and_cells
    lm.prefix_reuse = True
    previous: list[list[int]] = []
    for cell in cells:  # deepest first: each cell shares the hay before its needle with the cell before
        rows = sorted(lm.tokenizer(d["prompt"], add_special_tokens=False)["input_ids"] for d in cell)
        best, earlier = 0, []
        for row in rows:
            target = row[:-MIN_RECOMPUTED]
            best += max((_shared(target, other) for other in previous + earlier), default=0)
            earlier.append(target)
        before = lm.prefix_tokens_reused
        _run(lm, cell, {})
        reused = lm.prefix_tokens_reused - before
        # a row may copy up to 2 x WAVE_GAIN tokens less, to be prefilled in one batch with other rows
        assert best - 2 * WAVE_GAIN * len(rows) <= reused <= best
        previous = rows
    assert lm.prefix_tokens_reused > 0


def _shared(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_rows_sharing_a_prefix_are_prefilled_in_one_batch():
    """Few-shot prompts: one shared exemplar prefix, then each question. One row prefills it, then the others at
    once, each copying the exemplars (not a chain of rows that each share two more tokens with the previous)."""
    from conftest import TINY_CONFIGS

    from rh_models.prefix_cache import PrefixCache

    prefix = list(range(100, 140))
    rows = [prefix + [7, 7, i] + list(range(200 + 10 * i, 230 + 10 * i)) for i in range(6)]
    cache = PrefixCache(TINY_CONFIGS["llama"]())
    waves = cache._plan(rows)
    assert len(waves) == 2 and list(waves[0].values()) == [[(0, 0)]]
    [(source, _)], [members] = waves[1].keys(), waves[1].values()
    assert source == ("row", 0) and [b for b, _ in members] == [1, 2, 3, 4, 5]
    assert all(shared >= len(prefix) for _, shared in members)


def test_caches_with_other_layer_kinds_are_not_reused_and_say_so(caplog):
    """A linear-attention layer holds a running state, not per-token keys: it cannot be cut back to a prefix, so
    reuse is refused for the model (with one warning), never applied to a cache it would corrupt."""
    import transformers

    from rh_models.prefix_cache import PrefixCache

    hybrid = PrefixCache(transformers.LlamaConfig(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"]))
    with caplog.at_level("WARNING"):
        assert not hybrid.supported("Hybrid") and not hybrid.supported("Hybrid")
    assert caplog.text.count("cannot be rolled back") == 1
    sliding = transformers.LlamaConfig(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                                       sliding_window=8)
    assert PrefixCache(sliding).supported("Sliding")


def test_preallocated_cache_layer_equals_the_growing_one():
    from transformers.cache_utils import DynamicLayer

    from rh_models.prefix_cache import PreallocatedLayer

    grown, preallocated = DynamicLayer(), PreallocatedLayer(capacity=5)
    torch.manual_seed(0)
    for width in (3, 1, 1, 2):  # past the capacity too: it grows instead of failing
        keys, values = torch.randn(2, 3, width, 4), torch.randn(2, 3, width, 4)
        expected, got = grown.update(keys, values), preallocated.update(keys, values)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert preallocated.get_seq_length() == grown.get_seq_length() == 7


def test_detect_scores_do_not_depend_on_batching_or_reuse(tiny_llama_dir, tmp_path):
    from rh_eval.detect import detect, work_file
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    # min_score=-1: every test contributes its scores (a random model never answers right), so the score file's
    # per-test lists (values and order) are compared, not just empty lists
    grid = dict(lengths=[150, 200], depths=[0, 50, 100], samples=3, max_gen_toks=5, progress=False, min_score=-1)
    runs = {}
    for name, reuse, batched in (("alone", False, "none"), ("batched", True, "cell"), ("lengths", True, "length")):
        out = tmp_path / f"{name}.json"
        detect(lm, out, prefix_reuse=reuse, batch_by=batched, **grid)
        rows = [json.loads(line) for line in work_file(out).read_text().splitlines()[1:]]  # after the settings
        runs[name] = ({row["key"]: (row["test"]["answer"], row["scores"]) for row in rows}, out.read_text())
    assert len(runs["alone"][0]) == 18 and runs["alone"] == runs["batched"] == runs["lengths"]
    assert all(scores is not None for _, scores in runs["alone"][0].values())


def test_rh_detect_cli_with_batched_cells(tiny_llama_dir, tmp_path, capsys):
    from rh_eval.cli import main

    out = tmp_path / "scores.json"
    args = ["detect", "--model", str(tiny_llama_dir), "--output", str(out), "--lengths", "150", "--depths", "0,100",
            "--samples", "2", "--max-gen-toks", "3", "--device", "cpu", "--batch-cells", "--plot", str(tmp_path / "h.png")]
    assert main(args) == 0
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["tests_seen"] == 4 and meta["prefix_tokens_reused"] > 0 and (tmp_path / "h.png").stat().st_size > 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(args) == 0  # a finished run resumes with nothing left to do
    assert json.loads(out.with_suffix(".meta.json").read_text())["tests_run_now"] == 0
    out.with_suffix(".tests.jsonl").unlink()
    capsys.readouterr()
    assert main(args) == 2  # a score file that is not resumable is never overwritten without --force
    assert "--force" in capsys.readouterr().err


def test_decode_scope_masks_the_same_steps_with_and_without_prefix_reuse(tiny_llama_dir, monkeypatch):
    """A prompt whose uncached tail is one token is prefilled with a one-token query: still prefill, never masked
    by a decode-scope mask, so every step's logits are those of fresh prefills."""
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1, dtype="float32",
                mask_heads="0-0;0-1;1-3", mask_scope="decode")
    hay = " ".join(f"item {i} is number {i * 7}." for i in range(20))
    prompts = [f"{hay} Question: what is item", f"{hay} Question: what is item 3?"]  # " 3?": three more tokens
    widths: list[int] = []  # query tokens of each prefix prefill
    prefill = lm._prefill

    def counted(rows: list[list[int]], cache) -> None:
        widths.append(max(map(len, rows)) - cache.get_seq_length())
        prefill(rows, cache)

    monkeypatch.setattr(lm, "_prefill", counted)

    def run() -> tuple[list[str], list[torch.Tensor]]:
        steps: list[torch.Tensor] = []
        hook = lm.model.register_forward_hook(lambda module, args, output: steps.append(output.logits[0, -1].clone()))
        try:
            requests = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 4}), 0) for p in prompts]
            answers = [lm.generate_until([request], disable_tqdm=True)[0] for request in requests]
        finally:
            hook.remove()
        return answers, steps

    fresh, fresh_steps = run()
    lm.prefix_reuse = True
    reused, reused_steps = run()
    assert widths[-1] == 1  # the second prompt continues the first's cache by one token before generate()
    assert reused == fresh and len(reused_steps) == len(fresh_steps) == 8
    for got, expected in zip(reused_steps, fresh_steps):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    lm.set_mask("none")
    lm.prefix_reuse = False
    _, unmasked_steps = run()  # the mask left each prompt's prefill (steps 0 and 4) alone and changed its decoding
    assert [torch.equal(a, b) for a, b in zip(fresh_steps, unmasked_steps)] == [True, False, False, False] * 2

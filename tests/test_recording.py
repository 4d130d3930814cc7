"""Copy events, retrieval scores, the recorder's needle bookkeeping, and `rh detect`'s files and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from rh_eval.heads_compare import compare_scores
from rh_models.observers import TopOneRows
from rh_models.errors import RHError
from rh_models.heads import HeadScores
from rh_models.recorder import ScoreRecorder, answer_steps
from rh_models.scores import ScoreAccumulator, copy_events, retrieval_scores

N_LAYERS, N_HEADS = 2, 3


def test_copy_events_need_needle_position_and_same_token():
    #            0  1  2  3  4  5  6 | generated: 7  8  9
    sequence = torch.tensor([9, 9, 40, 41, 42, 9, 9, 40, 41, 42])
    needle = [2, 3, 4]
    top1 = torch.zeros(3, N_LAYERS, N_HEADS, dtype=torch.long)
    top1[:, 0, 1] = torch.tensor([2, 3, 4])  # copies each needle token as it is generated
    top1[:, 1, 0] = torch.tensor([3, 4, 2])  # looks at the needle, but never at the token being generated
    top1[:, 1, 2] = torch.tensor([5, 6, 0])  # looks outside the needle
    events = copy_events(top1, sequence, prompt_length=7, needle_positions=needle, steps=3)
    assert {(e.layer, e.head) for e in events} == {(0, 1)}
    assert [(e.step, e.position, e.token) for e in events] == [(0, 2, 40), (1, 3, 41), (2, 4, 42)]
    scores = retrieval_scores(events, len(needle), N_LAYERS, N_HEADS)
    expected = torch.zeros(N_LAYERS, N_HEADS)
    expected[0, 1] = 1.0
    assert torch.equal(scores, expected)
    # only the steps that belong to the kept answer count
    assert len(copy_events(top1, sequence, 7, needle, steps=1)) == 1


def test_distinct_positions_by_default_repeats_on_request():
    sequence = torch.tensor([7, 50, 51, 7, 50, 50, 50])
    top1 = torch.zeros(3, 1, 1, dtype=torch.long)
    top1[:, 0, 0] = torch.tensor([1, 1, 1])  # the same needle position copied three times
    events = copy_events(top1, sequence, prompt_length=4, needle_positions=[1, 2], steps=3)
    assert retrieval_scores(events, 2, 1, 1).item() == pytest.approx(0.5)
    assert retrieval_scores(events, 2, 1, 1, count_repeats=True).item() == pytest.approx(1.5)  # the paper's code


def test_accumulator_paper_format_and_contributing_count(tmp_path):
    accumulator = ScoreAccumulator(N_LAYERS, N_HEADS)
    first = torch.zeros(N_LAYERS, N_HEADS)
    first[1, 2] = 0.5
    accumulator.add(first)
    accumulator.add(None)  # a wrong answer: counted as seen, contributes nothing
    accumulator.add(torch.ones(N_LAYERS, N_HEADS))
    accumulator.write(tmp_path / "s.json")
    raw = json.loads((tmp_path / "s.json").read_text())
    assert raw["1-2"] == [0.5, 1.0] and raw["0-0"] == [0.0, 1.0] and len(raw) == 6
    assert (accumulator.tests_seen, accumulator.tests_contributing) == (3, 2)
    assert HeadScores.load(tmp_path / "s.json", N_LAYERS, N_HEADS).top(1) == [(1, 2)]


class _Request:
    def __init__(self, doc, context=""):
        self.doc, self.task_name, self.doc_id, self.args = doc, "rh_niah", 0, (context, {})


def _record(recorder, context, doc, row, mask, output, rows, answer):
    """One generated batch of one row, then lm-eval's post-processed answer for it."""
    request = _Request(doc, context)
    recorder.observe([context], [request], row, mask, output, rows)
    recorder.conclude([request], [answer])


def _forced_copy_batch(tokenizer, answer: str, pad: int = 3):
    """A left-padded batch row whose generation copies the needle, with head (1, 2) forced onto it."""
    needle = "The magic word for today is periwinkle."
    context = f"Some filler text. {needle} More filler.\nQuestion: What is the magic word?\nAnswer:"
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    needle_ids = tokenizer(" " + needle.split(" is ")[1].rstrip("."), add_special_tokens=False)["input_ids"]
    generated = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] * 2
    row = torch.tensor([tokenizer.pad_token_id] * pad + ids)
    output = torch.cat([row, torch.tensor(generated)]).unsqueeze(0)
    start = context.index("periwinkle")
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    word_tokens = [pad + i for i, (s, e) in enumerate(offsets) if s < start + len("periwinkle") and e > start]
    rows = TopOneRows()
    for step in range(len(generated)):
        per_layer = [torch.full((1, N_HEADS), pad) for _ in range(N_LAYERS)]  # everyone else: filler
        if step < len(word_tokens):
            per_layer[1][0, 2] = word_tokens[step] if generated[step] == output[0, word_tokens[step]] else pad
        rows.positions.append(per_layer)
        rows.kv_lengths.append([row.shape[0] + step] * N_LAYERS)
    doc = {"rh_needles": [needle], "rh_answers": ["periwinkle"], "rh_metric": "rouge1_recall",
           "rh_labels": {"cell": "100-50"}}
    mask = torch.tensor([[0] * pad + [1] * len(ids)])
    return context, doc, row.unsqueeze(0), mask, output, rows, needle_ids


def test_recorder_scores_forced_copy_head_and_applies_correctness_filter(smollm_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    recorder = ScoreRecorder(tokenizer, N_LAYERS, N_HEADS, tmp_path / "scores.json")
    context, doc, row, mask, output, rows, _ = _forced_copy_batch(tokenizer, "periwinkle")
    _record(recorder, context, doc, row, mask, output, rows, " periwinkle")
    needle_tokens = len(tokenizer(doc["rh_needles"][0], add_special_tokens=False)["input_ids"])
    word_tokens = len(tokenizer(" periwinkle", add_special_tokens=False)["input_ids"])
    scores = torch.tensor(recorder.accumulator.per_test[0]).view(N_LAYERS, N_HEADS)
    assert scores[1, 2] == pytest.approx(word_tokens / needle_tokens) and scores[1, 2] > 0
    assert scores.sum() == scores[1, 2]  # every other head scores 0
    assert recorder.tests[-1]["contributing"] and recorder.tests[-1]["answer"].strip() == "periwinkle"
    assert {e["head"] for e in recorder.events} == {2}

    context, doc, row, mask, output, rows, _ = _forced_copy_batch(tokenizer, "lavender")
    _record(recorder, context, doc, row, mask, output, rows, " lavender")
    assert recorder.accumulator.tests_seen == 2 and recorder.accumulator.tests_contributing == 1

    recorder.write({"model": "hand-built"})
    meta = json.loads(recorder.meta_path.read_text())
    assert (meta["tests_seen"], meta["tests_contributing"], meta["model"]) == (2, 1, "hand-built")
    assert recorder.events_path.read_text().count("\n") == len(recorder.events)


def test_recorder_refuses_missing_or_truncated_needles(smollm_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    recorder = ScoreRecorder(tokenizer, N_LAYERS, N_HEADS, tmp_path / "scores.json")
    context, doc, row, mask, output, rows, _ = _forced_copy_batch(tokenizer, "periwinkle")
    with pytest.raises(RHError, match="needle not found in the prompt"):
        _record(recorder, context, {**doc, "rh_needles": ["absent"]}, row, mask, output, rows, "periwinkle")
    cut = row[:, 8:]  # left truncation removed the start of the prompt, needle included
    cut_rows = TopOneRows(rows.positions, [[n - 8 for n in lengths] for lengths in rows.kv_lengths])  # its cache too
    with pytest.raises(RHError, match="cut by left truncation"):
        _record(recorder, context, doc, cut, torch.ones_like(cut), output[:, 8:], cut_rows, "periwinkle")
    with pytest.raises(RHError, match="must name its metric"):
        _record(recorder, context, {**doc, "rh_metric": None}, row, mask, output, rows, "periwinkle")


def test_answer_steps_follow_lm_evals_post_processing(smollm_dir):
    """The copy steps end where lm-eval's scored answer ends: at the stop sequence, after any thinking."""
    from lm_eval.models.utils import postprocess_generated_text
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731 -- HFLM.tok_decode
    ids = tokenizer(" blue sky\nmore", add_special_tokens=False)["input_ids"]
    answer = postprocess_generated_text(decode(ids), ["\n"], None)
    steps = answer_steps(decode, ids, answer)
    assert answer == " blue sky" and decode(ids[:steps]) == " blue sky" and steps < len(ids)
    eos = tokenizer.eos_token_id
    assert answer_steps(decode, ids[:2] + [eos] + ids, decode(ids[:2])) == 2  # EOS ends the answer
    thinking = tokenizer(" let me think\n</think> blue sky\nmore", add_special_tokens=False)["input_ids"]
    answer = postprocess_generated_text(decode(thinking), ["\n"], "</think>")
    steps = answer_steps(decode, thinking, answer, think_end_token="</think>")
    assert answer == "blue sky" and decode(thinking[:steps]).endswith("</think> blue sky")
    with pytest.raises(RHError, match="not in the decoded generation"):
        answer_steps(decode, ids, "lavender")


def test_compare_scores_overlap_and_tau():
    a = HeadScores({(0, 0): [0.9], (0, 1): [0.5], (1, 0): [0.1], (1, 1): [0.0]}, 2, 2)
    b = HeadScores({(0, 0): [0.8], (0, 1): [0.0], (1, 0): [0.6], (1, 1): [0.1]}, 2, 2)
    result = compare_scores(a, a, top=2)
    assert result["overlap"] == 2 and result["kendall_tau"] == pytest.approx(1.0)
    result = compare_scores(a, b, top=2)
    assert result["overlap"] == 1 and result["shared"] == "0-0" and result["kendall_tau"] < 1
    with pytest.raises(RHError, match="different shapes"):
        compare_scores(a, HeadScores({(2, 0): [1.0]}, 3, 1))


def test_record_scores_through_lm_eval_and_overwrite_guard(tiny_llama_dir, tmp_path):
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    path = tmp_path / "rec" / "scores.json"
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", record_scores=str(path), batch_size=2)
    docs = build_docs(lm.tokenizer, lengths=[120], depths=[0, 100], samples=2, max_length=lm.max_length)
    requests = [Instance("generate_until", d, (d["prompt"], {"until": ["\n"], "max_gen_toks": 4}), i,
                         metadata=("rh_niah", i, 1)) for i, d in enumerate(docs)]
    requests.append(Instance("generate_until", {"q": "plain"}, ("No needle here", {"until": ["\n"], "max_gen_toks": 4}), 9))
    lm.generate_until(requests, disable_tqdm=True)
    raw = json.loads(path.read_text())
    assert len(raw) == 2 * 4  # every head of the model, paper format
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["tests_seen"] == len(docs)  # the doc without a needle is not a test
    assert meta["labels"]["length"] == [120] and meta["n_layers"] == 2 and meta["transformers_version"]
    assert path.with_suffix(".events.jsonl").exists()
    with pytest.raises(RHError, match="exists"):
        RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", record_scores=str(path))


def test_detect_resumes_and_never_overwrites_silently(tiny_llama_dir, tmp_path):
    from rh_eval.detect import detect, work_file
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    output = tmp_path / "scores.json"
    first = detect(lm, output, lengths=[150], depths=[0, 50, 100], samples=2, max_gen_toks=4, progress=False)
    assert first["tests_seen"] == 6 and first["tests_run_now"] == 6
    assert first["prefix_tokens_reused"] > 0  # consecutive depths shared the hay before the needle
    lines = work_file(output).read_text().splitlines()
    assert json.loads(lines[0])["settings"]["depths"] == [0, 50, 100]  # what made the work comes first
    work_file(output).write_text("\n".join(lines[:5]) + "\n")  # as if interrupted after four tests
    again = detect(lm, output, lengths=[150], depths=[0, 50, 100], samples=2, max_gen_toks=4, progress=False)
    assert again["tests_run_now"] == 2 and again["tests_seen"] == 6
    work_file(output).unlink()
    with pytest.raises(RHError, match="pass --force"):
        detect(lm, output, lengths=[150], depths=[0, 50], samples=1, progress=False)
    forced = detect(lm, output, lengths=[150], depths=[0, 50], samples=1, max_gen_toks=4, force=True, progress=False)
    assert forced["tests_seen"] == 2


def test_detect_runs_depth_major_so_every_prompt_reuses_the_hay_before_its_needle(tiny_llama_dir, tmp_path):
    from rh_eval.detect import detect, work_file
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    output = tmp_path / "scores.json"
    detect(lm, output, lengths=[150, 200], depths=[0, 50, 100], samples=2, max_gen_toks=2, progress=False)
    order = []
    for line in work_file(output).read_text().splitlines()[1:]:  # after the settings line
        needle, cell = json.loads(line)["key"].split("|")
        length, depth = map(int, cell.split("-"))
        order.append((length, depth, needle))
    # per length: deepest depth first, and all needles of a depth together (not needle by needle)
    assert order == sorted(order, key=lambda t: (t[0], -t[1], t[2])) and len(order) == 12
    assert [depth for _, depth, _ in order[:6]] == [100, 100, 50, 50, 0, 0]


def test_prefix_reuse_gives_the_same_generations(tiny_llama_dir):
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    docs = build_docs(lm.tokenizer, lengths=[150], depths=[100, 50, 0], samples=1, max_length=lm.max_length)
    requests = [[Instance("generate_until", d, (d["prompt"], {"until": ["\n"], "max_gen_toks": 6}), 0)] for d in docs]
    fresh = [lm.generate_until(r, disable_tqdm=True) for r in requests]
    lm.prefix_reuse = True
    reused = [lm.generate_until(r, disable_tqdm=True) for r in requests]
    assert reused == fresh and lm.prefix_tokens_reused > 0


@pytest.mark.smollm
def test_smollm2_detection_is_sparse_and_stable_across_needle_sets(tmp_path, smollm_paper_detection):
    """The paper-needle detection is the session's shared one (conftest, same grid); the KV-needle one runs here."""
    from conftest import SMOLLM_DETECTION_GRID
    from rh_eval.detect import detect
    from rh_models.lm import RHHFLM

    paper_file, paper = smollm_paper_detection
    lm = RHHFLM(pretrained="smollm2-135m", device="cpu", batch_size=1)
    kv = detect(lm, tmp_path / "kv.json", needles="kv", progress=False, **SMOLLM_DETECTION_GRID)
    for summary in (paper, kv):
        assert summary["tests_seen"] == 18 and summary["tests_contributing"] >= 6
        assert 0 < summary["fraction_above_0.1"] < 0.10  # a sparse set of heads, as the paper reports
    overlap = compare_scores(HeadScores.load(paper_file), HeadScores.load(tmp_path / "kv.json"), top=10)
    print(f"\nSmolLM2 paper vs kv needles: answered {paper['tests_contributing']} / {kv['tests_contributing']} of 18, "
          f"above 0.1 {paper['fraction_above_0.1']:.3f} / {kv['fraction_above_0.1']:.3f}, top-10 overlap "
          f"{overlap['overlap']}, tau {overlap['kendall_tau']:.2f}")
    assert overlap["overlap"] >= 4 and overlap["kendall_tau"] > 0.2


@pytest.mark.slow
def test_multiprocess_recording_gathers_on_rank_zero(tiny_llama_dir, tmp_path):
    """`accelerate launch -m lm_eval --model rh-hf` with 2 CPU processes (gloo; accelerate calls multi-process
    `--multi_gpu`, ACCELERATE_USE_CPU keeps it on the CPU): each rank records its own docs, rank 0 writes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    scores = tmp_path / "s.json"
    result = subprocess.run(
        [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lm_eval", "--model", "rh-hf",
         "--model_args", f"pretrained={tiny_llama_dir},record_scores={scores}", "--tasks", "rh_niah",
         "--metadata", '{"lengths": [150], "depths": [0, 100]}', "--gen_kwargs", "max_gen_toks=3"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads(scores.with_suffix(".meta.json").read_text())
    assert meta["tests_seen"] == 6  # 3 needles x 2 depths, split over two ranks and gathered on rank 0
    assert len({(t["task"], t["doc_id"]) for t in meta["tests"]}) == 6


def test_recorder_judges_answers_with_the_tasks_own_metric(smollm_dir, tmp_path):
    """A test contributes exactly when the task's own metric says it was answered (one scoring function)."""
    from transformers import AutoTokenizer

    from rh_tasks.metrics import process_results

    tokenizer = AutoTokenizer.from_pretrained(smollm_dir)
    recorder = ScoreRecorder(tokenizer, N_LAYERS, N_HEADS, tmp_path / "scores.json")
    doc = _forced_copy_batch(tokenizer, "periwinkle")[1]
    kv_doc = {**doc, "rh_answers": ["periwinkle"], "rh_metric": "string_match"}
    two_answers = {**doc, "rh_answers": ["periwinkle", "lavender blue"], "rh_metric": "rouge1_recall"}
    # string_match finds the value inside a word where ROUGE-1 sees another word; with two answers the task
    # scores the mean recall (0.5: not answered), where a max over answers would say 1.0
    for test_doc, word, answered in ((kv_doc, "Periwinkle-ish", True), (two_answers, "periwinkle", False),
                                     (doc, "periwinkle", True), (kv_doc, "lavender", False)):
        context, _, row, mask, output, rows, _ = _forced_copy_batch(tokenizer, word)
        answer = " " + word
        _record(recorder, context, test_doc, row, mask, output, rows, answer)
        test = recorder.tests[-1]
        assert test["answer_score"] == process_results(test_doc, [answer])["score"]
        assert test["contributing"] is answered, (test_doc["rh_metric"], answer)
    assert recorder.accumulator.tests_contributing == 2


def test_recorded_answer_is_the_one_lm_eval_scores(tiny_llama_dir, tmp_path):
    """lm-eval drops everything up to ``think_end_token``; the recorder judges that same string."""
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    plain = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu")
    [doc] = build_docs(plain.tokenizer, lengths=[120], depths=[50], samples=1, max_length=plain.max_length)
    request = Instance("generate_until", doc, (doc["prompt"], {"until": [], "max_gen_toks": 8}), 0,
                       metadata=("rh_niah_paper", 0, 1))
    text = plain.generate_until([request], disable_tqdm=True)[0]
    marker = text[len(text) // 2 :][:2]
    assert marker.strip(), text  # the random model produced some text to split
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", think_end_token=marker,
                record_scores=str(tmp_path / "s.json"), record_min_score=-1)
    [answer] = lm.generate_until([request], disable_tqdm=True)
    assert answer != text and text.endswith(answer)
    meta = json.loads((tmp_path / "s.meta.json").read_text())
    assert [t["answer"] for t in meta["tests"]] == [answer]


def test_provenance_records_whether_lm_eval_applied_the_chat_template(tiny_llama_dir):
    """Told by the call, not guessed from the prompt text (a "<|" test missed Gemma's <start_of_turn>)."""
    from rh_models.lm import RHHFLM

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=1)
    assert lm.provenance()["chat_template"] is False
    rendered = lm.apply_chat_template([{"role": "user", "content": "Where is the key?"}])
    assert "Where is the key?" in rendered and lm.provenance()["chat_template"] is True


@pytest.mark.parametrize("same_object", [False, True], ids=["two-docs-alike", "one-request-repeated"])
def test_identical_prompts_in_one_batch_are_tests_of_their_own(tiny_llama_dir, tmp_path, same_object):
    """Two requests with one prompt (two docs alike, or lm-eval's repeats: one Instance listed twice), sampled so
    that their rows differ: each test is judged on its own row. On 3ac779b rows were looked up by prompt text, so
    both tests got the last row, and the first answer was not found in it."""
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    path = tmp_path / "scores.json"
    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", record_scores=str(path), batch_size=2,
                record_min_score=-1)
    [doc] = build_docs(lm.tokenizer, lengths=[120], depths=[50], samples=1, max_length=lm.max_length)
    settings = {"until": ["\n"], "max_gen_toks": 4, "do_sample": True, "temperature": 1.0}
    requests = [Instance("generate_until", dict(doc), (doc["prompt"], dict(settings)), i, metadata=("rh_niah", i, 1))
                for i in range(2)]
    if same_object:
        requests[1] = requests[0]
    torch.manual_seed(0)
    answers = lm.generate_until(requests, disable_tqdm=True)
    assert answers[0] != answers[1]  # the two rows differ, so a mix-up would show
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    assert meta["tests_seen"] == 2 and [t["answer"] for t in meta["tests"]] == answers
    assert [t["doc_id"] for t in meta["tests"]] == [requests[0].doc_id, requests[1].doc_id]


def test_identical_needle_prompts_with_different_settings_are_refused(tiny_llama_dir, tmp_path):
    """lm-eval runs each generation setting on its own, so such rows could come back out of order."""
    from rh_models.lm import RHHFLM
    from rh_tasks.niah_docs import build_docs

    lm = RHHFLM(pretrained=str(tiny_llama_dir), device="cpu", record_scores=str(tmp_path / "s.json"))
    [doc] = build_docs(lm.tokenizer, lengths=[120], depths=[50], samples=1, max_length=lm.max_length)
    requests = [Instance("generate_until", doc, (doc["prompt"], {"until": ["\n"], "max_gen_toks": n}), i)
                for i, n in enumerate((3, 4))]
    with pytest.raises(RHError, match="2 requests send the same needle prompt with different generation settings"):
        lm.generate_until(requests, disable_tqdm=True)

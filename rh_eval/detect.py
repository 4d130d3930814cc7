"""``rh detect``: the paper's retrieval-head detection, resumable, through our NIAH task and ``rh-hf`` code.

Usage::

    rh detect --model smollm2-135m --output scores.json --lengths 500,1000,2000 --depths 0,25,50,75,100 \\
        --plot heads.png

Protocol (Wu et al. 2024): for each context length x needle depth x needle, greedy-decode the answer while
recording every head's top-1 attended position; a test whose answer is right (ROUGE-1 recall of the real
needle > 0.5) adds each head's retrieval score to that head's list. The default grid is the paper's: 20
lengths x 11 depths (0, 10, ..., 100) x 3 needles, capped by the model's context.

Why a loop of our own rather than one ``simple_evaluate`` call: each finished test is appended to
``<output>.tests.jsonl`` so an interrupted run resumes where it stopped, and tests are ordered so that
consecutive prompts share the haystack before the needle, which ``rh-hf``'s ``prefix_reuse`` turns into
skipped prefill. ``batch_by="cell"`` runs the needles of one (length, depth) cell as one batch, ``"length"``
every test of a context length: each row still starts from the longest prefix cached before it, and a batched
decoding step costs far less per row than a step of one (on 2 CPU cores: 8 ms a row at 48 rows, 75 ms alone).
Off by default, the paper's one-test-at-a-time order; the scores are the same either way (tested). Prompts, needles and scoring are the same code the
``rh_niah`` task and ``rh-hf`` use.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, TextIO

from rh_eval.resume import Journal
from rh_models.answers import ANSWERED_ABOVE
from rh_models.atomic import write_json_atomic
from rh_models.errors import RHError
from rh_models.heads import DEFAULT_RETRIEVAL_THRESHOLD, HeadScores, format_head
from rh_tasks.niah import generation_stop
from rh_tasks.niah_docs import DEFAULT_DEPTHS, build_docs

DEFAULT_NUM_LENGTHS = 20
DEFAULT_MIN_LENGTH = 1000
SCORES = ("copy", "attention", "induction", "echo")  # --score; the last three: rh_eval.detect_mass
SCORE_INPUTS = {"copy": "needle tests: greedy answers, copying heads counted on correct ones",
                "attention": "needle tests: the prompt and a null question in its place, one forward each",
                "induction": "random tokens repeated twice (data-free)",
                "echo": "random tokens repeated twice (data-free)"}


def work_file(output: Path) -> Path:
    return output.with_suffix(".tests.jsonl")


def evenly_spaced_lengths(max_length: int, count: int, min_length: int = DEFAULT_MIN_LENGTH) -> list[int]:
    """The paper's sweep: ``count`` lengths from ``min_length`` to ``max_length`` (rounded to 10 tokens)."""
    if count < 1:
        raise RHError("--num-lengths must be at least 1")
    low = min(min_length, max_length)
    if count == 1:
        return [max_length // 10 * 10]
    step = (max_length - low) / (count - 1)
    return sorted({int(round((low + i * step) / 10) * 10) for i in range(count)})


def prepare_output(output: Path, force: bool) -> Path:
    """The journal beside ``output``: both removed with ``force``; a finished score file without one is refused."""
    work = work_file(output)
    if force:
        output.unlink(missing_ok=True)
        work.unlink(missing_ok=True)
    elif output.exists() and not work.exists():
        raise RHError(f"{output} exists and has no resumable {work.name}; pass --force to overwrite it")
    return work


def _test_key(doc: dict) -> str:
    return f"{doc['needle_id']}|{doc['cell']}"


BATCHING = ("none", "cell", "length")


def _batches(todo: list[dict], batch_by: str) -> list[list[int]]:
    """Indices into ``todo``: one test per batch, or every remaining test of a cell / of a length together."""
    if batch_by not in BATCHING:
        raise RHError(f"batching {batch_by!r} is not one of {', '.join(BATCHING)}")
    if batch_by == "none":
        return [[i] for i in range(len(todo))]
    batches: list[list[int]] = []
    for i, doc in enumerate(todo):
        if batches and todo[batches[-1][0]][batch_by] == doc[batch_by]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def detect(
    model: Any,
    output: str | Path,
    lengths: list[int] | None = None,
    max_length: int | None = None,
    num_lengths: int = DEFAULT_NUM_LENGTHS,
    depths: list[int] | tuple[int, ...] = DEFAULT_DEPTHS,
    needles: str = "paper",
    haystack: str = "pg_essays",
    samples: int | None = 3,
    seed: int = 0,
    max_gen_toks: int = 32,
    chat_template: bool = False,
    prefix_reuse: bool = True,
    batch_by: str = "none",
    force: bool = False,
    min_score: float = ANSWERED_ABOVE,
    count_repeats: bool = False,
    progress: bool | TextIO = True,
    model_args: dict | None = None,
) -> dict:
    """Run detection and write ``output`` (paper format) plus ``.meta.json``; returns the summary dict.

    ``model`` is a model name/alias/path or an already loaded :class:`~rh_models.lm.RHHFLM`.
    """
    from lm_eval.api.instance import Instance
    from tqdm import tqdm

    from rh_eval.models import load_hf
    from rh_models.lm import RHHFLM

    output = Path(output)
    work = prepare_output(output, force)
    lm = model if isinstance(model, RHHFLM) else load_hf(model, **(model_args or {}))
    lengths, docs = needle_tests(lm, lengths, max_length, num_lengths, depths, needles, haystack, samples, seed,
                                 max_gen_toks, chat_template)

    settings = detection_settings(lm, docs, lengths=lengths, depths=depths, needles=needles, haystack=haystack,
                                  samples=samples, seed=seed, max_gen_toks=max_gen_toks, chat_template=chat_template,
                                  min_score=min_score, count_repeats=count_repeats, batch_by=batch_by,
                                  prefix_reuse=prefix_reuse)
    work.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(work, settings, "rh detect")
    recorder = lm.new_recorder(output, min_score, count_repeats)
    keys = {_test_key(d) for d in docs}
    finished = {row["key"]: row for row in journal.rows if row.get("key") in keys}
    for row in finished.values():
        recorder.accumulator.add(row["scores"])
        recorder.tests.append(row["test"])
    todo = [n for n, d in enumerate(docs) if _test_key(d) not in finished]  # positions in docs: stable doc ids
    gen_kwargs = {"until": generation_stop(), "max_gen_toks": max_gen_toks, "do_sample": False}
    started = time.perf_counter()
    bar_file = None if isinstance(progress, bool) else progress  # a stream: draw the bar there (quiet console)
    with tqdm(total=len(todo), desc="rh detect", disable=progress is False, unit="test", file=bar_file) as bar:
        for batch in _batches([docs[n] for n in todo], batch_by):
            instances = [Instance("generate_until", docs[n], (docs[n]["prompt"], dict(gen_kwargs)), n,
                                  metadata=("rh_detect", n, 1)) for n in (todo[i] for i in batch)]
            tests_before, scores_before = len(recorder.tests), len(recorder.accumulator.per_test)
            with lm.settings(recorder=recorder, batch_size=len(instances), prefix_reuse=prefix_reuse):
                lm.generate_until(instances, disable_tqdm=True)
            new_scores = iter(recorder.accumulator.per_test[scores_before:])
            rows = []
            for test in recorder.tests[tests_before:]:  # in request order: the recorder concludes in that order
                scores = next(new_scores) if test["contributing"] else None
                rows.append({"key": _test_key(docs[test["doc_id"]]), "test": test, "scores": scores})
            journal.append(rows)
            bar.update(len(instances))
    elapsed = time.perf_counter() - started

    provenance = lm.provenance()
    provenance.update({"lengths": sorted(set(lengths)), "depths": sorted(set(depths)), "needles": needles,
                       "haystack": haystack, "seed": seed, "samples": samples, "chat_template": chat_template,
                       "max_gen_toks": max_gen_toks, "protocol": "rh detect",
                       "score": score_block("copy", min_score=min_score, count_repeats=count_repeats,
                                            max_gen_toks=max_gen_toks)})
    recorder.accumulator.write(output)
    summary = summarize(HeadScores.load(output, lm.n_layers, lm.n_heads), recorder)
    summary.update({"seconds_this_run": round(elapsed, 1), "tests_run_now": len(todo),
                    "prefix_tokens_reused": lm.prefix_tokens_reused})
    write_json_atomic(recorder.meta_path, {**provenance, **summary, "tests": recorder.tests})
    return summary


def needle_tests(lm: Any, lengths: list[int] | None, max_length: int | None, num_lengths: int,
                 depths: list[int] | tuple[int, ...], needles: str, haystack: str, samples: int | None, seed: int,
                 max_gen_toks: int, chat_template: bool) -> tuple[list[int], list[dict]]:
    """A detection's lengths and its needle-test documents, in the order they run.

    The copy score and the attention score (:mod:`rh_eval.detect_mass`) read the same documents, so they are built
    here once. Without ``lengths``, ``num_lengths`` evenly spaced ones up to what the model's context leaves for the
    answer. Deepest needle first, every needle of a depth before the next depth: each prompt then shares all the hay
    before its needle with the previous prompt (the haystack of a length does not depend on the needle), 46 % of
    prompt tokens on the paper's grid; (needle, length, -depth) order shared only 40 %.
    """
    if lengths is None:
        lengths = evenly_spaced_lengths(min(max_length or lm.max_length, lm.max_length) - max_gen_toks - 16,
                                        num_lengths)
    docs = build_docs(
        lm.tokenizer, lengths=lengths, depths=depths, needles=needles, haystack=haystack, seed=seed,
        max_length=lm.max_length, max_gen_toks=max_gen_toks, chat_template=chat_template, samples=samples,
    )
    docs.sort(key=lambda d: (d["length"], -d["depth"], d["needle_id"]))
    return lengths, docs


def detection_settings(lm: Any, docs: list[dict], **grid: Any) -> dict[str, Any]:
    """What defines a detection's result, in the order a refusal names differences (fingerprints last).

    Batching and prefix reuse are in it: padding a batch changes the matmuls' shapes, which moves low-precision
    (bf16) logits, so a run resumed with another batching could mix two numerics. ``prompts_sha256`` covers what
    the readable fields cannot (a haystack folder edited in place, a tokenizer that splits differently); the
    settings fingerprint (:mod:`rh_eval.fingerprint`) the dtype, device, attention kernel and software versions.
    """
    from rh_eval.fingerprint import fingerprint

    provenance = lm.provenance()
    prompts = json.dumps([[_test_key(d), d["prompt"], d["rh_answers"]] for d in docs])
    mask = lm.mask_info()
    return {
        "model": provenance["model"],
        "model_config_sha256": provenance["model_config_sha256"],
        "mask": {"heads": mask["heads"], "method": mask["method"], "scope": mask["scope"]},
        **{name: sorted(set(value)) if name in ("lengths", "depths") else value for name, value in grid.items()},
        "prompts_sha256": hashlib.sha256(prompts.encode()).hexdigest(),
        "fingerprint": fingerprint(lm, "hf"),
    }


def summarize(scores: HeadScores, recorder=None, top: int = 20) -> dict:
    """What a reader wants first: how sparse the retrieval heads are and which ones they are."""
    total = scores.n_layers * scores.n_heads
    ranked = scores.ranked()
    summary = {
        "heads": total,
        "fraction_above_0.1": scores.share_above(DEFAULT_RETRIEVAL_THRESHOLD),
        "fraction_above_0.5": scores.share_above(0.5),
        "top": [[format_head(h), round(s, 4)] for h, s in ranked[:top]],
    }
    if recorder is not None:
        summary["tests_seen"] = recorder.accumulator.tests_seen
        summary["tests_contributing"] = recorder.accumulator.tests_contributing
    return summary


def score_block(score: str, **parameters: Any) -> dict[str, Any]:
    """The ``"score"`` entry of a detection's ``.meta.json``: which score, on what inputs, with which parameters."""
    return {"name": score, "inputs": SCORE_INPUTS[score], "parameters": parameters}


def print_summary(summary: dict, output: Path, file: TextIO | None = None) -> None:
    score = (summary.get("score") or {}).get("name", "copy")
    tests = (f"tests: {summary.get('tests_seen')} run, {summary.get('tests_contributing')} answered correctly "
             f"(only those contribute)" if score == "copy" else
             f"tests: {summary.get('tests_seen')} run (score {score}: no generation, every test counts)")
    lines = [
        tests,
        f"heads with mean score > {DEFAULT_RETRIEVAL_THRESHOLD}: {summary['fraction_above_0.1']:.1%}; "
        f"> 0.5: {summary['fraction_above_0.5']:.1%}",
        "top heads: " + ", ".join(f"{head} ({score:.3f})" for head, score in summary["top"]),
        f"wrote {output}",
    ]
    print("\n".join(lines), file=file)

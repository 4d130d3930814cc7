"""``rh detect --score attention|induction|echo``: the attention-mass head scores, resumable, in the paper's format.

Usage::

    rh detect --score attention --model smollm2-135m --output attention.json --lengths 500,1000 --depths 0,50,100
    rh detect --score induction --model smollm2-135m --output induction.json --lengths 500,1000 --samples 3

What each score measures is in :mod:`rh_models.mass_scores`. ``attention`` runs on the same needle tests as the copy
score (the same grid flags, the same documents); ``induction`` and ``echo`` are data-free: ``--lengths`` are the
context lengths of the sequences (random tokens, repeated twice), ``--samples`` how many per length, ``--seed``
draws them.
None generates, so every test contributes. An ``attention`` test prefills its prompt up to the question once (from
the longest prefix an earlier prompt cached) and then reads the question and its null question as one batch of two
rows over that cache; an ``induction`` / ``echo`` test is one forward over every sample of one length.

The output is what ``rh detect`` writes for the copy score: the score file (``{"L-H": [score per test, ...]}``),
``.meta.json`` with the model's provenance and ``"score": {"name", "inputs", "parameters"}``, and the
``.tests.jsonl`` journal an interrupted run resumes from (refused under other settings).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, TextIO

from rh_eval.detect import (
    DEFAULT_NUM_LENGTHS,
    _test_key,
    detection_settings,
    needle_tests,
    score_block,
    prepare_output,
    summarize,
)
from rh_eval.resume import Journal
from rh_models.atomic import write_json_atomic
from rh_models.errors import RHError
from rh_models.heads import HeadScores, score_meta_path
from rh_models.mass_scores import MASS_SCORES, NULL_QUESTION, measure, question_test, repeat_tests, token_candidates
from rh_models.scores import ScoreAccumulator
from rh_tasks.niah_docs import DEFAULT_DEPTHS

DEFAULT_REPEAT_LENGTHS = (200, 400)  # context lengths: short enough for any model, long enough to average
FIT_GEN_TOKS = 32  # the budget the copy score's default grid leaves for its answer: the same documents here


def detect_mass(
    model: Any,
    output: str | Path,
    score: str,
    lengths: list[int] | None = None,
    samples: int = 3,
    seed: int = 0,
    force: bool = False,
    progress: bool | TextIO = True,
    model_args: dict | None = None,
    max_length: int | None = None,
    num_lengths: int = DEFAULT_NUM_LENGTHS,
    depths: list[int] | tuple[int, ...] = DEFAULT_DEPTHS,
    needles: str = "paper",
    haystack: str = "pg_essays",
    chat_template: bool = False,
) -> dict:
    """Write ``output`` (paper format) and ``.meta.json`` for one of :data:`MASS_SCORES`; returns the summary.

    ``lengths``, ``samples`` and ``seed`` are every score's; the rest pick ``attention``'s needle tests, the copy
    score's documents (:func:`rh_eval.detect.needle_tests`).
    """
    from tqdm import tqdm

    from rh_eval.models import load_hf
    from rh_models.lm import RHHFLM

    if score not in MASS_SCORES:
        raise RHError(f"unknown score {score!r}: choose one of copy, {', '.join(MASS_SCORES)}")
    output = Path(output)
    work = prepare_output(output, force)
    lm = model if isinstance(model, RHHFLM) else load_hf(model, **(model_args or {}))
    if score == "attention":
        lengths, docs = needle_tests(lm, lengths, max_length, num_lengths, depths, needles, haystack, samples, seed,
                                     FIT_GEN_TOKS, chat_template)
        jobs = [(_test_key(d), d) for d in docs]
        parameters = {"null_question": NULL_QUESTION, "rows": "every token after the haystack",
                      "targets": "the asked needles' tokens", "calibrated": "question minus null question"}
        grid = dict(lengths=lengths, depths=depths, needles=needles, haystack=haystack, samples=samples, seed=seed,
                    chat_template=chat_template)
    else:
        lengths = sorted(set(lengths or DEFAULT_REPEAT_LENGTHS))
        docs = []
        candidates = token_candidates(lm.tokenizer, lm.model.config.get_text_config().vocab_size)
        prefix = lm.tok_encode("")
        jobs = [(f"{score}|{n}", repeat_tests(candidates, prefix, n, samples, seed, score)) for n in lengths]
        parameters = {"lengths": lengths, "samples": samples, "seed": seed, "prefix": prefix,
                      "target": "the key after the previous occurrence" if score == "induction"
                      else "the previous occurrence"}
        grid = dict(lengths=lengths, samples=samples, seed=seed,
                    inputs_sha256=hashlib.sha256(b"".join(t.ids.numpy().tobytes() for _, t in jobs)).hexdigest())
    block = score_block(score, **parameters)
    settings = detection_settings(lm, docs, score=block, **grid)
    work.parent.mkdir(parents=True, exist_ok=True)
    journal = Journal(work, settings, "rh detect")
    done = {row["key"]: row for row in journal.rows}  # one line per test key: a kill never leaves half a key
    todo = [(key, job) for key, job in jobs if key not in done]
    started = time.perf_counter()
    bar_file = None if isinstance(progress, bool) else progress
    with tqdm(total=len(todo), desc=f"rh detect --score {score}", disable=progress is False, unit="test",
              file=bar_file) as bar:
        for key, job in todo:
            test = question_test(lm.tokenizer, lm.tok_encode(job["prompt"]), job) if score == "attention" else job
            per_test = measure(lm.model, lm.control, test, lm.cached_prompt)
            labels = ([dict(job["rh_labels"])] if score == "attention"
                      else [{"length": int(key.split("|")[1]), "sample": n} for n in range(len(per_test))])
            done[key] = {"key": key, "tests": labels, "scores": [s.flatten().tolist() for s in per_test]}
            journal.append([done[key]])
            bar.update(1)
    elapsed = time.perf_counter() - started
    accumulator, tests = ScoreAccumulator(lm.n_layers, lm.n_heads), []
    for key, _ in jobs:
        for test, scores in zip(done[key]["tests"], done[key]["scores"]):
            accumulator.add(scores)
            tests.append(test)

    accumulator.write(output)
    inputs = {k: sorted(set(v)) if k in ("lengths", "depths") else v for k, v in grid.items() if k != "inputs_sha256"}
    provenance = {**lm.provenance(), **inputs, "protocol": "rh detect", "score": block}
    summary = summarize(HeadScores.load(output, lm.n_layers, lm.n_heads))
    summary.update({"score": block, "tests_seen": accumulator.tests_seen, "tests_contributing": accumulator.tests_seen,
                    "seconds_this_run": round(elapsed, 1), "tests_run_now": len(todo)})
    write_json_atomic(score_meta_path(output), {**provenance, **summary, "tests": tests})
    return summary

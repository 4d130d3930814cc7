"""Copy events and per-test retrieval scores of every generated answer whose doc carries a needle.

Usage (driven by :class:`rh_models.lm.RHHFLM`; shown here for clarity)::

    recorder = ScoreRecorder(tokenizer, n_layers=30, n_heads=9, path="scores.json", decode=lm.tok_decode)
    recorder.observe(contexts, requests, context_ids, attention_mask, output_ids, rows)  # per generated batch
    recorder.conclude(requests, answers)   # lm-eval's post-processed answers, in request order
    recorder.write(provenance)

**The doc contract.** A doc is a needle test when it carries these fields (our NIAH tasks set them; any task can):

* ``rh_needles`` -- list of needle texts, each occurring exactly once in the final prompt lm-eval sends;
* ``rh_answers`` -- what a right answer contains;
* ``rh_metric`` -- how an answer is scored, one of :data:`rh_models.answers.METRICS`: the task's own metric;
* ``rh_labels`` -- optional dict (e.g. ``{"cell": "1000-50", "length": 1000}``) copied into every test record.

A test *contributes* to the score file when its answer -- the very string lm-eval scores, after its own stop
sequences and ``think_end_token`` handling -- scores above ``min_score`` with ``rh_metric`` (the paper: ROUGE-1
recall > 0.5). Copy events count over the generated tokens up to where that answer ends.

The needle is located in the *final* prompt string (chat template and few-shot included) and mapped to token
positions through the tokenizer's offsets; a needle that is not in the prompt, or that truncation cut, is an
error -- never a silently lost test.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rh_models.answers import ANSWERED_ABOVE, METRICS, score_answer
from rh_models.atomic import write_json_atomic, write_text_atomic
from rh_models.observers import TopOneRows
from rh_models.errors import RHError
from rh_models.heads import score_meta_path
from rh_models.scores import ScoreAccumulator, copy_events, retrieval_scores


def is_needle_test(doc: Any) -> bool:
    return isinstance(doc, dict) and bool(doc.get("rh_needles"))


def check_needle_doc(doc: dict) -> None:
    """The contract above, or one clear line (a half-filled doc must not be scored by a guess)."""
    if not doc.get("rh_answers"):
        raise RHError("a doc with rh_needles must also carry rh_answers (what a right answer contains)")
    if doc.get("rh_metric") not in METRICS:
        raise RHError(f"a doc with rh_needles must name its metric: rh_metric one of {', '.join(METRICS)}, "
                      f"got {doc.get('rh_metric')!r}")


def needle_char_spans(context: str, needles: Sequence[str]) -> list[tuple[int, int]]:
    spans = []
    for needle in needles:
        start = context.find(needle)
        if start < 0:
            raise RHError(f"needle not found in the prompt: {needle[:60]!r}")
        if context.find(needle, start + 1) >= 0:
            raise RHError(f"needle occurs more than once in the prompt: {needle[:60]!r}")
        spans.append((start, start + len(needle)))
    return spans


def span_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens (by their character ``offsets``) that overlap characters ``start .. end``."""
    return [i for i, (s, e) in enumerate(offsets) if s < end and e > start]


def answer_steps(decode: Callable[[list[int]], str], generated: list[int], answer: str,
                 think_end_token: str | int | None = None) -> int:
    """How many generated tokens it took to produce lm-eval's ``answer`` (thinking included, stop excluded).

    lm-eval decodes the continuation, drops everything up to ``think_end_token`` and cuts at the first stop
    sequence; the answer it scores therefore ends at a known place of the decoded text, and the copy steps are
    the tokens up to there.
    """
    first = 0
    if isinstance(think_end_token, int) and think_end_token in generated:
        first = len(generated) - generated[::-1].index(think_end_token)
    tail = generated[first:]
    text = decode(tail)
    start = 0
    if isinstance(think_end_token, str) and think_end_token in text:
        start = text.rindex(think_end_token) + len(think_end_token)
    at = text.find(answer, start)
    if at < 0:
        raise RHError("lm-eval's answer is not in the decoded generation; cannot align copy events with it")
    end = at + len(answer)
    for steps in range(len(tail) + 1):
        if len(decode(tail[:steps])) >= end:
            return first + steps
    return len(generated)


@dataclass
class _Pending:
    """One generated row, waiting for lm-eval's post-processed answer."""

    top1: torch.Tensor  # (steps, layers, heads) absolute positions
    sequence: torch.Tensor  # padded prompt + generated tokens
    prompt_length: int
    needle_positions: list[int]


class ScoreRecorder:
    """Accumulates retrieval scores and copy events over a whole lm-eval run."""

    def __init__(
        self,
        tokenizer,
        n_layers: int,
        n_heads: int,
        path: str | Path,
        min_score: float = ANSWERED_ABOVE,
        count_repeats: bool = False,
        decode: Callable[[list[int]], str] | None = None,
        think_end_token: str | int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.n_layers, self.n_heads = n_layers, n_heads
        self.path = Path(path)
        self.min_score = min_score
        self.count_repeats = count_repeats
        self.decode = decode or (lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self.think_end_token = think_end_token
        self.accumulator = ScoreAccumulator(n_layers, n_heads)
        self.events: list[dict] = []
        self.tests: list[dict] = []
        self._pending: dict[int, deque[_Pending]] = {}  # id(request) -> its observed rows, in generation order

    @property
    def events_path(self) -> Path:
        return self.path.with_suffix(".events.jsonl")

    @property
    def meta_path(self) -> Path:
        return score_meta_path(self.path)

    def needle_positions(self, context: str, needles: Sequence[str], row: torch.Tensor, real_length: int) -> list[int]:
        """Token positions (in the padded batch row) of every needle token."""
        encoding = self.tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        width = row.shape[0]
        shift = width - len(ids)  # our encoding ends the row (BOS and left padding come before it)
        kept_from = width - real_length  # first non-padding position; earlier tokens were padded or cut
        visible = min(len(ids), real_length)
        if row[width - visible :].tolist() != ids[len(ids) - visible :]:
            raise RHError("prompt tokens differ from a standalone tokenization; cannot locate the needle")
        positions = []
        for start, end in needle_char_spans(context, needles):
            positions.extend(shift + i for i in span_tokens(offsets, start, end))
        if min(positions) < kept_from:
            raise RHError("the needle was cut by left truncation: make the prompt shorter than max_length - max_gen_toks")
        return positions

    def observe(
        self,
        contexts: Sequence[str],
        requests: Sequence[Any],
        context_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        output_ids: torch.Tensor,
        rows: TopOneRows,
    ) -> None:
        """Keep the top-1 rows of every needle test of one generated batch (``requests[i]`` may be ``None``).

        Rows are kept by request, never by prompt text: two requests with the same prompt are two tests, and a
        request lm-eval repeats (the same object several times) gets its rows back in the order they were made.
        """
        if not rows.positions:
            return
        prompt_length = context_ids.shape[1]
        top1 = rows.absolute(prompt_length)  # (steps, batch, layers, heads)
        output_ids = output_ids.cpu()
        for b, (context, request) in enumerate(zip(contexts, requests)):
            if request is None:
                continue
            check_needle_doc(request.doc)
            positions = self.needle_positions(
                context, request.doc["rh_needles"], context_ids[b].cpu(), int(attention_mask[b].sum())
            )
            pending = _Pending(top1[:, b], output_ids[b], prompt_length, positions)
            self._pending.setdefault(id(request), deque()).append(pending)

    def conclude(self, requests: Sequence[Any], answers: Sequence[str]) -> None:
        """Judge every observed needle test by lm-eval's own answer, in request order; forget the rest."""
        try:
            for request, answer in zip(requests, answers):
                rows = self._pending.get(id(request)) if is_needle_test(request.doc) else None
                pending = rows.popleft() if rows else None
                if pending is not None:
                    self._add_test(request, pending, answer)
        finally:
            self._pending = {}

    def _add_test(self, request: Any, pending: _Pending, answer: str) -> None:
        doc = request.doc
        generated = pending.sequence[pending.prompt_length :].tolist()
        steps = min(answer_steps(self.decode, generated, answer, self.think_end_token), pending.top1.shape[0])
        events = copy_events(pending.top1, pending.sequence, pending.prompt_length, pending.needle_positions, steps)
        score = score_answer(answer, doc["rh_answers"], doc["rh_metric"])
        answered = score > self.min_score
        scores = retrieval_scores(events, len(pending.needle_positions), self.n_layers, self.n_heads, self.count_repeats)
        self.accumulator.add(scores if answered else None)
        sample = {"task": request.task_name, "doc_id": request.doc_id, **dict(doc.get("rh_labels") or {})}
        self.tests.append({**sample, "answer_score": score, "contributing": answered, "answer": answer})
        self.events.extend({**sample, **asdict(e)} for e in events)

    # ------------------------------------------------------------------ output
    def gather(self, lm) -> bool:
        """Merge every rank's records on rank 0; returns True on the rank that should write."""
        if getattr(lm, "world_size", 1) <= 1:
            return True
        payload = (self.accumulator.per_test, self.accumulator.tests_seen, self.events, self.tests)
        gathered = lm.gather_object(payload, dst=0)
        if lm.rank != 0:
            return False
        self.accumulator = ScoreAccumulator(self.n_layers, self.n_heads)
        self.events, self.tests = [], []
        for per_test, seen, events, tests in gathered:
            self.accumulator.per_test.extend(per_test)
            self.accumulator.tests_seen += seen
            self.events.extend(events)
            self.tests.extend(tests)
        return True

    def summary(self) -> dict[str, Any]:
        """Counts and labels of the recorded tests, for the ``.meta.json`` beside the score file."""
        labels: dict[str, set] = {}
        for test in self.tests:
            for key, value in test.items():
                if key not in ("task", "doc_id", "answer_score", "contributing", "answer"):
                    labels.setdefault(key, set()).add(value)
        return {
            "tests_seen": self.accumulator.tests_seen,
            "tests_contributing": self.accumulator.tests_contributing,
            "min_score": self.min_score,
            "count_repeats": self.count_repeats,
            "labels": {key: sorted(values, key=str) for key, values in sorted(labels.items())},
            "tasks": sorted({t["task"] for t in self.tests}),
        }

    def write(self, provenance: dict) -> None:
        self.accumulator.write(self.path)
        write_json_atomic(self.meta_path, {**provenance, **self.summary(), "tests": self.tests})
        write_text_atomic(self.events_path, "".join(json.dumps(event) + "\n" for event in self.events))

"""Turns one generated batch into copy events and per-test retrieval scores, for docs that carry a needle.

Usage (driven by :class:`rh_models.lm.RHHFLM`; shown here for clarity)::

    recorder = ScoreRecorder(tokenizer, n_layers=30, n_heads=9, path="scores.json")
    recorder.add_batch(contexts, docs, context_ids, attention_mask, output_ids, rows, stop)
    recorder.write(provenance)

Docs from our NIAH tasks carry ``rh_needles`` (exact needle texts in the prompt) and ``rh_answers`` (what a
correct answer contains). The needle is located in the *final* prompt string lm-eval sends (chat template
and few-shot included) and mapped to token positions through the tokenizer's offsets; a needle that is not
in the prompt, or that truncation cut, is an error — never a silently lost test.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from rouge_score import rouge_scorer

from rh_models.attention import TopOneRows
from rh_models.errors import RHError
from rh_models.scores import ScoreAccumulator, copy_events, retrieval_scores, write_json_atomic

_ROUGE = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)


def carries_needle(doc: Any) -> bool:
    return isinstance(doc, dict) and bool(doc.get("rh_needles"))


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall of the reference (the paper's correctness criterion for a NIAH answer)."""
    return _ROUGE.score(reference, prediction)["rouge1"].recall


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


def kept_steps(tokenizer, generated: list[int], stop: Sequence[str], eos_ids: set[int]) -> tuple[int, str]:
    """How many generated tokens form the answer lm-eval keeps (up to EOS or the first stop string)."""
    kept: list[int] = []
    for token in generated:
        if token in eos_ids:
            break
        kept.append(token)
        text = tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s and s in text), default=-1)
        if cut >= 0:
            return len(kept), text[:cut]
    return len(kept), tokenizer.decode(kept, skip_special_tokens=True)


class ScoreRecorder:
    """Accumulates retrieval scores and copy events over a whole lm-eval run."""

    def __init__(
        self,
        tokenizer,
        n_layers: int,
        n_heads: int,
        path: str | Path,
        min_rouge: float = 0.5,
        count_repeats: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.n_layers, self.n_heads = n_layers, n_heads
        self.path = Path(path)
        self.min_rouge = min_rouge
        self.count_repeats = count_repeats
        self.accumulator = ScoreAccumulator(n_layers, n_heads)
        self.events: list[dict] = []
        self.tests: list[dict] = []
        eos = tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.pad_token_id is not None:
            self.eos_ids.add(tokenizer.pad_token_id)

    @property
    def events_path(self) -> Path:
        return self.path.with_suffix(".events.jsonl")

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".meta.json")

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
            tokens = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
            positions.extend(shift + i for i in tokens)
        if min(positions) < kept_from:
            raise RHError("the needle was cut by left truncation: make the prompt shorter than max_length - max_gen_toks")
        return positions

    def add_batch(
        self,
        contexts: Sequence[str],
        requests: Sequence[Any],
        context_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        output_ids: torch.Tensor,
        rows: TopOneRows,
        stop: Sequence[str],
    ) -> None:
        """Score every needle-carrying request of one generated batch (``requests[i]`` may be ``None``)."""
        if not rows.positions:
            return
        prompt_length = context_ids.shape[1]
        top1 = rows.absolute(prompt_length)  # (steps, batch, layers, heads)
        output_ids = output_ids.cpu()
        for b, (context, request) in enumerate(zip(contexts, requests)):
            if request is None:
                continue
            doc = request.doc
            positions = self.needle_positions(
                context, doc["rh_needles"], context_ids[b].cpu(), int(attention_mask[b].sum())
            )
            generated = output_ids[b, prompt_length:].tolist()
            steps, answer = kept_steps(self.tokenizer, generated, stop, self.eos_ids)
            steps = min(steps, top1.shape[0])
            events = copy_events(top1[:, b], output_ids[b], prompt_length, positions, steps)
            answers = doc.get("rh_answers") or doc["rh_needles"]
            recall = max(rouge1_recall(a, answer) for a in answers)
            correct = recall > self.min_rouge
            scores = retrieval_scores(events, len(positions), self.n_layers, self.n_heads, self.count_repeats)
            self.accumulator.add(scores if correct else None)
            sample = {"task": request.task_name, "doc_id": request.doc_id, "cell": doc.get("cell")}
            self.tests.append({**sample, "rouge1_recall": recall, "contributing": correct, "answer": answer})
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

    def write(self, provenance: dict) -> None:
        self.accumulator.write(self.path)
        summary = {
            "tests_seen": self.accumulator.tests_seen,
            "tests_contributing": self.accumulator.tests_contributing,
            "min_rouge": self.min_rouge,
            "count_repeats": self.count_repeats,
            "cells": sorted({t["cell"] for t in self.tests if t.get("cell")}),
            "tasks": sorted({t["task"] for t in self.tests}),
        }
        write_json_atomic(self.meta_path, {**provenance, **summary, "tests": self.tests})
        tmp = self.events_path.with_name(f".{self.events_path.name}.tmp")
        with tmp.open("w") as stream:
            for event in self.events:
                stream.write(json.dumps(event) + "\n")
        tmp.replace(self.events_path)

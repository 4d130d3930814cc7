"""Attention-mass head scores: which rows each score reads, onto which keys, and the one forward that reads them.

Usage::

    test = question_test(tokenizer, lm.tok_encode(doc["prompt"]), doc)          # attention: one needle test
    tests = repeat_tests(candidates, lm.tok_encode(""), length=200, samples=3, seed=0, score="induction")
    per_test = measure(model, control, test)                                    # (tests, layers, heads)

Three scores beside the paper's copy score (:mod:`rh_models.scores`), each a mean attention weight, per head:

* ``attention`` (QRHead's query-focused score, calibrated): on a needle test, the weight each head puts on the
  needle's tokens from the question's positions (every token after the haystack: closing tag, question, answer
  prefix), averaged over those positions, minus the same with the question's tokens replaced by a *null question*
  of the same token count (``N/A`` repeated, QRHead's null query). The calibration removes what a head gives the
  needle whatever is asked (a sink, a recency habit); what is left is attention the question itself directs there.
  Question and null question continue one cache of the prompt before the question's positions, as a batch of two
  rows with identical positions, so they differ only in the question.
* ``induction`` / ``echo`` (RazorAttention's, data-free): on distinct random tokens repeated twice, at
  each position of the second copy, the weight on the token *after* the same token's previous occurrence
  (induction: the head predicts the repeat) or on that previous occurrence itself (echo). Distinct tokens make the
  previous occurrence unique; special tokens are never drawn; the model's own start token (lm-eval's, if it adds
  one) leads the sequence, since models without it put their attention sink elsewhere.

No generation, no answer filter: every test counts (a head's list holds one score per test, the paper's format).
The rows are read by :class:`rh_models.observers.TargetMass` in step 1 of the attention function, from the one
forward that ends the sequence: after a cache of the shared prefix (the prompt before the question, where a question
and its null question share it), or over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from rh_models.errors import RHError
from rh_models.observers import TargetMass
from rh_models.recorder import span_tokens

MASS_SCORES = ("attention", "induction", "echo")
NULL_QUESTION = "N/A"  # QRHead's null query: cycled over the question's token count


@dataclass(frozen=True)
class MassTest:
    """One test's inputs: ``ids`` (rows of one length), the query positions read, and each one's target keys.

    ``calibrated``: ``ids`` is (question, null question) and the test's score is the first row's minus the second's.
    ``shared``: the leading positions every row holds alike (the prompt before the question's positions), run once
    into a cache that the rows continue from; what is read is the same as over whole rows.
    """

    ids: torch.Tensor  # (batch, length) long
    rows: torch.Tensor  # (r,) long
    targets: torch.Tensor  # (r, length) bool
    calibrated: bool = False
    shared: int = 0


def question_test(tokenizer: Any, encoded: Sequence[int], doc: dict, null_question: str = NULL_QUESTION) -> MassTest:
    """The ``attention`` score's test of one NIAH doc: its prompt as the model reads it (``encoded``, lm-eval's
    tokens, a start token included) and the same prompt with the question's tokens replaced by the null question."""
    prompt = doc["prompt"]
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    plain, offsets = list(encoding["input_ids"]), encoding["offset_mapping"]
    shift = len(encoded) - len(plain)  # the tokens lm-eval puts before the prompt's own (a start token)
    if shift < 0 or list(encoded[shift:]) != plain:
        raise RHError("the prompt's tokens differ from a standalone tokenization; cannot locate needle and question")
    needle = sorted({shift + i for start, end in doc["needle_spans"] for i in span_tokens(offsets, start, end)})
    after = [shift + i for i, (start, _) in enumerate(offsets) if start >= doc["hay_end"]]
    question = [shift + i for i in span_tokens(offsets, *doc["question_span"])]
    if not needle or not question or not after or question[0] < after[0]:
        raise RHError(f"doc {doc.get('cell', '?')}: needle, question or the text after the haystack has no token of "
                      "its own in the prompt")
    null = tokenizer(null_question, add_special_tokens=False)["input_ids"]
    if not null:
        raise RHError(f"the null question {null_question!r} has no tokens")
    null_ids = list(encoded)
    for n, position in enumerate(question):
        null_ids[position] = null[n % len(null)]
    length = len(encoded)
    rows = torch.tensor(after)
    targets = torch.zeros(len(after), length, dtype=torch.bool)
    targets[:, needle] = True
    return MassTest(torch.tensor([list(encoded), null_ids]), rows, targets, calibrated=True, shared=after[0])


def token_candidates(tokenizer: Any, vocab_size: int) -> torch.Tensor:
    """Token ids a random sequence may use: the model's and the tokenizer's vocabulary, special tokens left out."""
    size = min(vocab_size, len(tokenizer))
    keep = torch.ones(size, dtype=torch.bool)
    special = [i for i in tokenizer.all_special_ids if i < size]
    keep[special] = False
    return keep.nonzero().flatten()


def repeat_tests(candidates: torch.Tensor, prefix: Sequence[int], length: int, samples: int, seed: int,
                 score: str) -> MassTest:
    """``samples`` sequences of ``length`` tokens (a context length, as NIAH's): ``prefix`` (the model's start
    token), then ``(length - len(prefix)) // 2`` distinct random tokens (seeded by ``seed`` and ``length``) twice. One
    batch; its rows are the second copy's positions, each targeting the key after (``induction``) or at (``echo``)
    its token's first occurrence."""
    if score not in ("induction", "echo"):
        raise RHError(f"repeat_tests scores induction or echo, not {score!r}")
    block = (length - len(prefix)) // 2
    if block < 2 or block > len(candidates):
        raise RHError(f"a repeated random sequence of length {length} holds {block} distinct tokens twice; it needs "
                      f"2 .. {len(candidates)} (lengths {len(prefix) + 4} .. {len(prefix) + 2 * len(candidates)})")
    if samples < 1:
        raise RHError("--samples must be at least 1")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length)
    start = torch.tensor(list(prefix), dtype=torch.long)
    sequences = []
    for _ in range(samples):
        tokens = candidates[torch.randperm(len(candidates), generator=generator)[:block]]
        sequences.append(torch.cat([start, tokens, tokens]))
    rows, targets = repeat_rows(len(start), block, score)
    return MassTest(torch.stack(sequences), rows, targets)


def repeat_rows(first: int, block: int, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and targets of ``block`` tokens repeated twice after ``first`` others: the second copy's positions, each
    targeting the key after (``induction``) or at (``echo``) the same offset of the first copy."""
    rows = torch.arange(first + block, first + 2 * block)
    previous = rows - block  # the same token's first occurrence
    targets = torch.zeros(block, first + 2 * block, dtype=torch.bool)
    targets[torch.arange(block), previous + 1 if score == "induction" else previous] = True
    return rows, targets


def measure(model: torch.nn.Module, control: Any, test: MassTest,
            cached_prompt: Callable[[torch.Tensor], Any] | None = None) -> torch.Tensor:
    """``(tests, layers, heads)`` scores of one :class:`MassTest`: the decoder only (no logits), with a
    :class:`TargetMass` observing the forward that ends the rows, after the shared prefix's, run once if there is
    one (by ``cached_prompt``, e.g. ``RHHFLM.cached_prompt``'s prefix reuse, else in full)."""
    from rh_models.compat import cache_kwarg

    mass = TargetMass(test.rows, test.targets, test.ids.shape[1], control.n_layers)
    ids = test.ids.to(next(model.parameters()).device)
    with torch.no_grad():
        if test.shared:
            shared = ids[:1, : test.shared]
            cache = (cached_prompt(shared) if cached_prompt is not None
                     else model.base_model(input_ids=shared, use_cache=True).past_key_values)
            cache.batch_repeat_interleave(ids.shape[0])
            with control.observing(mass):
                model.base_model(input_ids=ids[:, test.shared :], use_cache=True, **{cache_kwarg(): cache})
        else:
            with control.observing(mass):
                model.base_model(input_ids=ids, use_cache=False)
    per_row = mass.result()
    return per_row[:1] - per_row[1:2] if test.calibrated else per_row

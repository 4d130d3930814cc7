"""Seeded generators for the small-model chain-of-thought tasks: variable tracking, key->box hops, fact sums.

Usage::

    from rh_tasks.cot_data import GENERATORS
    docs = GENERATORS["vartrack"](n=100, seed=1234)
    docs[0]["question"]  # 'P = 47. K = 83. M = P. ... What is W?'
    docs[0]["cot"]       # 'W = M. M = P. P = 47. The answer is 47.'
    docs[0]["answer"]    # '47'

Why: a 135M model scores ~0 on GSM8K, so GSM8K cannot show that masking retrieval heads hurts chain-of-thought.
These tasks are easy *if* the model copies the right facts out of its context, step by step, which is what
retrieval heads do (Wu et al. 2024). Each has one integer answer, stated as ``The answer is N.`` like lm-eval's
``gsm8k_cot``, so the same regex filters and ``exact_match`` score the chain-of-thought and direct forms.

Documents are pure functions of ``(task, seed, index)``: ``n=50`` gives the first 50 documents of ``n=100``, on
any machine and Python version (``random.Random`` seeded with a string is stable). No files are involved.
Every question keeps several same-shaped distractors, so guessing one of the numbers it mentions scores at most
``1/len(numbers)``; :func:`chance` reports that floor.
"""

from __future__ import annotations

import random
from typing import Callable

Doc = dict[str, str]

# Single-token names in SmolLM2's tokenizer; "A" and "Q" are left out because the prompt format uses "Q:"/"A:".
VARIABLES = tuple("BCDEFGHJKLMNPRSTUVWXYZ")
PEOPLE = ("Anna", "Ben", "Carl", "Dan", "Emma", "Fred", "Jack", "Kate", "Lily", "Mark", "Nina", "Paul", "Rose",
          "Sam", "Tom", "Zoe")
COLORS = ("red", "blue", "green", "black", "white", "pink", "brown", "gray", "gold", "silver")
ITEMS = ("apples", "pens", "books", "cards", "coins", "shells", "stamps", "marbles")


def _rng(task: str, seed: int, index: int) -> random.Random:
    return random.Random(f"rh-cot/{task}/{seed}/{index}")


def _interleave(rng: random.Random, chains: list[list[str]]) -> list[str]:
    """Random merge of several lists that keeps each list's own order (definitions before their uses)."""
    pending = [list(chain) for chain in chains if chain]
    merged: list[str] = []
    while pending:
        weights = [len(chain) for chain in pending]
        chain = rng.choices(pending, weights=weights)[0]
        merged.append(chain.pop(0))
        pending = [c for c in pending if c]
    return merged


def vartrack_doc(rng: random.Random, hops: int = 3, chains: int = 3) -> Doc:
    """``P = 47. M = P. W = M.`` chains interleaved with distractor chains; asks for the last variable of one.

    The chain of thought walks back from the asked variable: ``W = M. M = P. P = 47. The answer is 47.``
    """
    names = rng.sample(VARIABLES, (hops + 1) * chains)
    values = rng.sample(range(10, 100), chains)
    programs: list[list[str]] = []
    for c in range(chains):
        chain = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        lines = [f"{chain[0]} = {values[c]}."] + [f"{chain[i]} = {chain[i - 1]}." for i in range(1, hops + 1)]
        programs.append(lines)
    target = names[: hops + 1]
    steps = [f"{target[i]} = {target[i - 1]}." for i in range(hops, 0, -1)] + [f"{target[0]} = {values[0]}."]
    return {
        "question": " ".join(_interleave(rng, programs)) + f" What is {target[-1]}?",
        "cot": " ".join(steps) + f" The answer is {values[0]}.",
        "answer": str(values[0]),
    }


def kvhop_doc(rng: random.Random, people: int = 4) -> Doc:
    """Who holds which key, which key opens which box; asks which box a person opens (two hops)."""
    who = rng.sample(PEOPLE, people)
    keys = rng.sample(COLORS, people)
    boxes = rng.sample(range(10, 100), people)
    holds = [f"{p} has the {k} key." for p, k in zip(who, keys)]
    opens = [f"The {k} key opens box {b}." for k, b in zip(keys, boxes)]
    facts = rng.sample(holds, people) + rng.sample(opens, people)
    return {
        "question": " ".join(facts) + f" Which box can {who[0]} open?",
        "cot": f"{holds[0]} {opens[0]} The answer is {boxes[0]}.",
        "answer": str(boxes[0]),
    }


def factsum_doc(rng: random.Random, people: int = 4) -> Doc:
    """How many of an item each person has; asks for the total of two of them (copy two facts, then add)."""
    who = rng.sample(PEOPLE, people)
    counts = [rng.randint(2, 9) for _ in who]
    item = rng.choice(ITEMS)
    facts = [f"{p} has {c} {item}." for p, c in zip(who, counts)]
    first, second = rng.sample(range(people), 2)
    total = counts[first] + counts[second]
    return {
        "question": " ".join(facts) + f" How many {item} do {who[first]} and {who[second]} have together?",
        "cot": f"{facts[first]} {facts[second]} {counts[first]} + {counts[second]} = {total}. The answer is {total}.",
        "answer": str(total),
    }


_DOC_MAKERS: dict[str, Callable[[random.Random], Doc]] = {
    "vartrack": vartrack_doc,
    "kvhop": kvhop_doc,
    "factsum": factsum_doc,
}


def generate(task: str, n: int, seed: int) -> list[Doc]:
    """The first ``n`` documents of ``task`` for ``seed`` (document ``i`` depends only on task, seed and i)."""
    make = _DOC_MAKERS[task]
    return [make(_rng(task, seed, i)) for i in range(n)]


def _generator(task: str) -> Callable[..., list[Doc]]:
    def gen(n: int, seed: int) -> list[Doc]:
        return generate(task, n, seed)

    gen.__name__ = f"generate_{task}"
    return gen


GENERATORS: dict[str, Callable[..., list[Doc]]] = {task: _generator(task) for task in _DOC_MAKERS}


def chance(task: str) -> float:
    """Score of always answering one of the numbers the question states, uniformly (the task's floor)."""
    return {"vartrack": 1 / 3, "kvhop": 1 / 4, "factsum": 0.0}[task]

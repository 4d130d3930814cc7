"""Seeded documents and hand-written exemplars for the small-model chain-of-thought tasks.

Usage::

    from rh_tasks.cot_data import generate, exemplars
    docs = generate("vartrack", n=100, seed=1234)
    docs[0]["question"]  # 'Emma has 41 coins. Fred has as many coins as Emma. ... How many coins does Fred have?'
    docs[0]["cot"]       # 'Fred has as many coins as Emma. Emma has 41 coins. The answer is 41.'
    docs[0]["answer"]    # '41'
    exemplars("vartrack")  # the 4 few-shot examples, same fields, written by hand

Why: a 135M model scores ~0 on GSM8K, so GSM8K cannot show that masking retrieval heads hurts chain-of-thought.
These tasks are easy *if* the model copies the right facts out of its context, one sentence at a time, which
is what retrieval heads do (Wu et al. 2024); answering directly needs the hops (or the sum) done silently.
Every answer is one integer, stated as ``The answer is N.`` like lm-eval's ``gsm8k_cot``, so the same regex
filters and ``exact_match`` score the chain-of-thought and the direct forms side by side.

* ``vartrack``: ``Sam has 72 coins. Mark has as many coins as Sam.`` chains among distractor chains.
* ``kvhop``: who holds which key, which key opens which box; which box does a person open (two hops).
* ``factsum``: how many of an item each person has; how many do two of them have together (copy, then add).

Documents are pure functions of ``(task, seed, index)``: ``n=50`` gives the first 50 documents of ``n=100``,
on any machine and Python version (``random.Random`` seeded with a string is stable); no files are involved.
The exemplars use names, colours and items that generated documents never use, so a model cannot score by
copying from an exemplar instead of from the question.
"""

from __future__ import annotations

import random
from typing import Callable

Doc = dict[str, str]

# Names, colours and items of generated documents (single tokens for SmolLM2's tokenizer).
PEOPLE = ("Anna", "Ben", "Carl", "Dan", "Emma", "Fred", "Jack", "Kate", "Lily", "Mark", "Nina", "Paul", "Rose",
          "Sam", "Tom", "Max", "Amy", "Ella", "Leo", "Mia")
COLORS = ("red", "blue", "green", "black", "white", "pink", "brown", "gray", "gold", "silver")
ITEMS = ("apples", "pens", "books", "cards", "shells", "stamps", "marbles", "stickers")
# The unit counted in vartrack; the exemplars count the same unit.
VARTRACK_UNIT = "coins"


def _rng(task: str, seed: int, index: int) -> random.Random:
    return random.Random(f"rh-cot/{task}/{seed}/{index}")


def _interleave(rng: random.Random, chains: list[list[str]]) -> list[str]:
    """Random merge of several lists that keeps each list's own order (a value is stated before it is used)."""
    pending = [list(chain) for chain in chains if chain]
    merged: list[str] = []
    while pending:
        chain = rng.choices(pending, weights=[len(c) for c in pending])[0]
        merged.append(chain.pop(0))
        pending = [c for c in pending if c]
    return merged


def vartrack_doc(rng: random.Random, hops: int = 1, chains: int = 3) -> Doc:
    """``chains`` chains of ``hops`` copies each, interleaved; asks for the last person of the first chain.

    A chain is ``Sam has 85 coins. Tom has as many coins as Sam.``: the chain of thought walks back from the
    asked person, copying each sentence it needs: ``Tom has as many coins as Sam. Sam has 85 coins.``
    """
    unit = VARTRACK_UNIT
    names = rng.sample(PEOPLE, (hops + 1) * chains)
    values = rng.sample(range(10, 100), chains)
    programs = []
    for c in range(chains):
        chain = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        lines = [f"{chain[0]} has {values[c]} {unit}."]
        lines += [f"{chain[i]} has as many {unit} as {chain[i - 1]}." for i in range(1, hops + 1)]
        programs.append(lines)
    target, steps = names[hops], list(reversed(programs[0]))
    return {
        "question": " ".join(_interleave(rng, programs)) + f" How many {unit} does {target} have?",
        "cot": " ".join(steps) + f" The answer is {values[0]}.",
        "answer": str(values[0]),
    }


def kvhop_doc(rng: random.Random, people: int = 3) -> Doc:
    """Who holds which key, then which key opens which box (each list shuffled); asks for one person's box."""
    who = rng.sample(PEOPLE, people)
    keys = rng.sample(COLORS, people)
    boxes = rng.sample(range(10, 100), people)
    holds = [f"{p} has the {k} key." for p, k in zip(who, keys)]
    opens = [f"The {k} key opens box {b}." for k, b in zip(keys, boxes)]
    return {
        "question": " ".join(rng.sample(holds, people) + rng.sample(opens, people)) + f" Which box can {who[0]} open?",
        "cot": f"{holds[0]} {opens[0]} The answer is {boxes[0]}.",
        "answer": str(boxes[0]),
    }


def factsum_doc(rng: random.Random, people: int = 3) -> Doc:
    """How many of one item each person has (2-9); asks for the total of two of them."""
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


DOC_MAKERS: dict[str, Callable[..., Doc]] = {
    "vartrack": vartrack_doc,
    "kvhop": kvhop_doc,
    "factsum": factsum_doc,
}


def generate(task: str, n: int, seed: int, **options: int) -> list[Doc]:
    """The first ``n`` documents of ``task`` for ``seed``; ``options`` go to the maker (e.g. ``hops=2``)."""
    make = DOC_MAKERS[task]
    return [make(_rng(task, seed, i), **options) for i in range(n)]


# Hand-written few-shot examples, in the shape of the default options (vartrack: 1 hop, 3 chains; 3 people).
_EXEMPLARS: dict[str, list[Doc]] = {
    "vartrack": [
        {
            "question": "Alice has 64 coins. Bob has 27 coins. Chris has as many coins as Alice. Dave has 85 coins. "
            "Eve has as many coins as Dave. Frank has as many coins as Bob. How many coins does Eve have?",
            "cot": "Eve has as many coins as Dave. Dave has 85 coins. The answer is 85.",
            "answer": "85",
        },
        {
            "question": "Grace has 19 coins. Helen has as many coins as Grace. Ivan has 52 coins. Julia has 38 coins. "
            "Karl has as many coins as Julia. Laura has as many coins as Ivan. How many coins does Helen have?",
            "cot": "Helen has as many coins as Grace. Grace has 19 coins. The answer is 19.",
            "answer": "19",
        },
        {
            "question": "Bob has 71 coins. Eve has 46 coins. Alice has 93 coins. Ivan has as many coins as Eve. "
            "Grace has as many coins as Alice. Chris has as many coins as Bob. How many coins does Ivan have?",
            "cot": "Ivan has as many coins as Eve. Eve has 46 coins. The answer is 46.",
            "answer": "46",
        },
        {
            "question": "Laura has 30 coins. Frank has as many coins as Laura. Dave has 58 coins. Helen has 12 coins. "
            "Julia has as many coins as Helen. Karl has as many coins as Dave. How many coins does Karl have?",
            "cot": "Karl has as many coins as Dave. Dave has 58 coins. The answer is 58.",
            "answer": "58",
        },
    ],
    "kvhop": [
        {
            "question": "Alice has the yellow key. Bob has the purple key. Chris has the orange key. "
            "The orange key opens box 41. The yellow key opens box 76. The purple key opens box 23. "
            "Which box can Bob open?",
            "cot": "Bob has the purple key. The purple key opens box 23. The answer is 23.",
            "answer": "23",
        },
        {
            "question": "Eve has the navy key. Dave has the violet key. Frank has the tan key. "
            "The violet key opens box 58. The tan key opens box 17. The navy key opens box 94. "
            "Which box can Frank open?",
            "cot": "Frank has the tan key. The tan key opens box 17. The answer is 17.",
            "answer": "17",
        },
        {
            "question": "Grace has the orange key. Helen has the yellow key. Ivan has the navy key. "
            "The yellow key opens box 35. The navy key opens box 62. The orange key opens box 80. "
            "Which box can Grace open?",
            "cot": "Grace has the orange key. The orange key opens box 80. The answer is 80.",
            "answer": "80",
        },
        {
            "question": "Julia has the tan key. Karl has the purple key. Laura has the violet key. "
            "The purple key opens box 49. The violet key opens box 13. The tan key opens box 66. "
            "Which box can Laura open?",
            "cot": "Laura has the violet key. The violet key opens box 13. The answer is 13.",
            "answer": "13",
        },
    ],
    "factsum": [
        {
            "question": "Alice has 4 cups. Bob has 7 cups. Chris has 5 cups. "
            "How many cups do Bob and Chris have together?",
            "cot": "Bob has 7 cups. Chris has 5 cups. 7 + 5 = 12. The answer is 12.",
            "answer": "12",
        },
        {
            "question": "Dave has 3 hats. Eve has 8 hats. Frank has 6 hats. "
            "How many hats do Frank and Dave have together?",
            "cot": "Frank has 6 hats. Dave has 3 hats. 6 + 3 = 9. The answer is 9.",
            "answer": "9",
        },
        {
            "question": "Grace has 9 bells. Helen has 2 bells. Ivan has 5 bells. "
            "How many bells do Grace and Ivan have together?",
            "cot": "Grace has 9 bells. Ivan has 5 bells. 9 + 5 = 14. The answer is 14.",
            "answer": "14",
        },
        {
            "question": "Julia has 6 toys. Karl has 4 toys. Laura has 8 toys. "
            "How many toys do Laura and Karl have together?",
            "cot": "Laura has 8 toys. Karl has 4 toys. 8 + 4 = 12. The answer is 12.",
            "answer": "12",
        },
    ],
}


def exemplars(task: str) -> list[Doc]:
    """The hand-written few-shot examples of ``task`` (copies; same fields as generated documents)."""
    return [dict(doc) for doc in _EXEMPLARS[task]]


def vartrack_exemplars() -> list[Doc]:
    """``fewshot_config.samples`` of the vartrack tasks (lm-eval calls it with no arguments)."""
    return exemplars("vartrack")


def kvhop_exemplars() -> list[Doc]:
    """``fewshot_config.samples`` of the kvhop tasks."""
    return exemplars("kvhop")


def factsum_exemplars() -> list[Doc]:
    """``fewshot_config.samples`` of the factsum tasks."""
    return exemplars("factsum")

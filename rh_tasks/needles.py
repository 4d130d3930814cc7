"""The needles hidden in NIAH haystacks: the paper's natural-language facts and RULER-style key -> value lines.

Usage::

    from rh_tasks.needles import make_needle_sets
    sets = make_needle_sets("paper", samples=3)                    # 3 hand-written fact needles
    sets = make_needle_sets("multikey", samples=3, seed=0)         # asked needle + 3 distractor keys
    sets[0].asked, sets[0].answers, sets[0].question, sets[0].answer_prefix

Why two families: Wu et al. (2024) detect retrieval heads with natural sentences whose "real needle" (the answer
span) must be copied verbatim, scored by ROUGE-1 recall; RULER's key -> value needles add random values (no prior
knowledge can guess them) and harder variants -- distractor keys (multikey), several values for one key
(multivalue) and several keys asked at once (multiquery) -- scored by substring match. Values are drawn from a
seeded ``random.Random``, so a grid is identical on every run and machine.

Every :class:`NeedleSet` carries the exact texts to insert: ``asked`` (the needles whose content the question
asks for; they become ``doc["rh_needles"]``), ``distractors`` (inserted, never asked), and ``answers``
(``doc["rh_answers"]``). The needles here were written for rh-eval.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from rh_models.answers import MATCH, ROUGE
from rh_models.errors import RHError

NEEDLE_KINDS = ("paper", "kv", "multikey", "multivalue", "multiquery")
KEY_TYPES = ("words", "numbers", "uuids")
VALUE_TYPES = ("numbers", "uuids", "words")


@dataclass(frozen=True)
class NeedleSet:
    """Everything one NIAH prompt hides and asks; ``asked[0]`` goes to the requested depth."""

    needle_id: str
    kind: str
    asked: tuple[str, ...]
    answers: tuple[str, ...]
    instruction: str
    question: str
    answer_prefix: str
    metric: str
    distractors: tuple[str, ...] = ()

    @property
    def inserted(self) -> tuple[str, ...]:
        """All texts to insert, the depth-controlled one first."""
        return self.asked + self.distractors


# --- the paper's style: a fact sentence, a question, and the "real needle" span the answer must copy -------------

PAPER_INSTRUCTION = (
    "Below is a long document. Somewhere inside it is a single sentence that answers the question "
    "after the document. Find it and answer using its exact words."
)


@dataclass(frozen=True)
class _Fact:
    needle_id: str
    sentence: str
    question: str
    real_needle: str
    answer_prefix: str


PAPER_FACTS: tuple[_Fact, ...] = (
    _Fact(
        "lasagna",
        "The secret ingredient in Grandma Rosa's famous lasagna is a spoonful of smoked paprika "
        "stirred into the tomato sauce.",
        "What is the secret ingredient in Grandma Rosa's famous lasagna?",
        "a spoonful of smoked paprika stirred into the tomato sauce",
        "The secret ingredient in Grandma Rosa's famous lasagna is",
    ),
    _Fact(
        "lighthouse",
        "The old lighthouse keeper on Gull Island spends every evening painting watercolor portraits "
        "of passing ships.",
        "What does the old lighthouse keeper on Gull Island do every evening?",
        "painting watercolor portraits of passing ships",
        "The old lighthouse keeper on Gull Island spends every evening",
    ),
    _Fact(
        "violin",
        "The rare violin stolen from the city museum was hidden inside a grandfather clock in the "
        "mayor's attic.",
        "Where was the rare violin stolen from the city museum hidden?",
        "inside a grandfather clock in the mayor's attic",
        "The rare violin stolen from the city museum was hidden",
    ),
)


def paper_needle_sets(samples: int | None = None) -> list[NeedleSet]:
    """The first ``samples`` paper-style needles (all of them by default)."""
    count = len(PAPER_FACTS) if samples is None else samples
    if not 1 <= count <= len(PAPER_FACTS):
        raise RHError(f"needles 'paper' has {len(PAPER_FACTS)} needles; samples must be 1..{len(PAPER_FACTS)}, got {count}")
    for fact in PAPER_FACTS:  # guard the hand-written data: the answer must be copyable from the needle
        assert fact.real_needle in fact.sentence and fact.sentence.startswith(fact.answer_prefix)
    return [
        NeedleSet(
            needle_id=fact.needle_id,
            kind="paper",
            asked=(fact.sentence,),
            answers=(fact.real_needle,),
            instruction=PAPER_INSTRUCTION,
            question=fact.question,
            answer_prefix=fact.answer_prefix,
            metric=ROUGE,
        )
        for fact in PAPER_FACTS[:count]
    ]


# --- RULER-style key -> value needles --------------------------------------------------------------------------

_ADJECTIVES = tuple("""
    amber ancient bitter brave bright calm clever crimson curious dusty eager electric fancy fierce
    frozen gentle gifted golden grumpy hollow humble icy jolly lazy loyal lucky misty modern narrow
    noble odd pale patient polite proud quiet rapid rustic scarlet shiny silent silver sleepy smooth
    solid sour steady stormy sturdy swift tame tender tiny velvet vivid wandering wild wise witty
    zealous
""".split())
_NOUNS = tuple("""
    anchor apple badger banjo basket beacon bicycle blanket bottle bridge candle canyon carpet castle
    cactus comet compass cottage crayon dolphin drum engine falcon feather fountain garden glacier
    hammer harbor helmet island jacket kettle ladder lantern lemon magnet meadow mirror needle orchard
    otter pebble pepper piano pillow planet puzzle rabbit ribbon saddle scarf shovel spider teapot
    thunder tiger trumpet violet walnut
""".split())
_VALUE_NAMES = {"numbers": "number", "uuids": "UUID", "words": "word"}


def _draw(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        return f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    raise RHError(f"unknown key/value type {kind!r}; choose one of {', '.join(VALUE_TYPES)}")


def _draw_distinct(rng: random.Random, kind: str, count: int, avoid: set[str], forbidden_text: str = "") -> list[str]:
    """``count`` fresh draws not in ``avoid`` and not occurring in ``forbidden_text`` (e.g. the haystack)."""
    out: list[str] = []
    for _ in range(count * 1000):
        if len(out) == count:
            break
        item = _draw(rng, kind)
        if item in avoid or item in out or (forbidden_text and item in forbidden_text):
            continue
        out.append(item)
    if len(out) < count:
        raise RHError(f"could not draw {count} distinct {kind} not already in the haystack; use another key type")
    avoid.update(out)
    return out


def kv_line(key: str, value: str, value_type: str = "numbers") -> str:
    """One key -> value needle sentence, e.g. ``The special magic number for brave-otter is: 4721905.``"""
    return f"The special magic {_VALUE_NAMES[value_type]} for {key} is: {value}."


def _join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


@dataclass(frozen=True)
class KVOptions:
    """How the key -> value variants draw their needles (RULER's knobs)."""

    key_type: str = "words"
    value_type: str = "numbers"
    num_distractors: int = 3  # multikey: keys inserted besides the asked one
    num_values: int = 4  # multivalue: values of the one key
    num_queries: int = 4  # multiquery: keys asked at once


def kv_needle_sets(kind: str, samples: int = 3, seed: int = 0, options: KVOptions = KVOptions(),
                   haystack_text: str = "") -> list[NeedleSet]:
    """``samples`` key -> value needle sets of one variant, deterministic in ``seed``.

    Keys and values never occur in ``haystack_text`` (so the ``needles`` haystack of distractor lines cannot
    contain the asked needle), and keys are distinct across all sets of the grid.
    """
    key_type, value_type = options.key_type, options.value_type
    num_distractors, num_values, num_queries = options.num_distractors, options.num_values, options.num_queries
    if key_type not in KEY_TYPES or value_type not in VALUE_TYPES:
        raise RHError(f"keys must be one of {', '.join(KEY_TYPES)} and values one of {', '.join(VALUE_TYPES)}; "
                      f"got keys={key_type!r}, values={value_type!r}")
    for name, count in (("samples", samples), ("num_distractors", num_distractors), ("num_values", num_values),
                        ("num_queries", num_queries)):
        if not isinstance(count, int) or count < 1:
            raise RHError(f"metadata {name} must be a positive integer, got {count!r}")
    rng = random.Random(f"rh-niah-{kind}-{seed}")
    used: set[str] = set()
    vname = _VALUE_NAMES[value_type]
    sets = []
    for index in range(samples):
        n_keys = {"multikey": 1 + num_distractors, "multiquery": num_queries}.get(kind, 1)
        keys = _draw_distinct(rng, key_type, n_keys, used, haystack_text)
        n_values = num_values if kind == "multivalue" else n_keys
        values = _draw_distinct(rng, value_type, n_values, used, haystack_text)
        if kind == "kv":
            asked, distractors, answers = [kv_line(keys[0], values[0], value_type)], [], values[:1]
            question = f"What is the special magic {vname} for {keys[0]} mentioned in the provided text?"
            prefix = f"The special magic {vname} for {keys[0]} is:"
            instruction = f"A special magic {vname} is hidden within the following text. Memorize it. " \
                          f"I will quiz you about it afterwards."
        elif kind == "multikey":
            lines = [kv_line(k, v, value_type) for k, v in zip(keys, values)]
            asked, distractors, answers = lines[:1], lines[1:], values[:1]
            question = f"What is the special magic {vname} for {keys[0]} mentioned in the provided text?"
            prefix = f"The special magic {vname} for {keys[0]} is:"
            instruction = f"Some special magic {vname}s are hidden within the following text. Memorize them. " \
                          f"I will quiz you about one of them afterwards."
        elif kind == "multivalue":
            asked, distractors, answers = [kv_line(keys[0], v, value_type) for v in values], [], values
            question = f"What are all the special magic {vname}s for {keys[0]} mentioned in the provided text?"
            prefix = f"The special magic {vname}s for {keys[0]} are:"
            instruction = f"Some special magic {vname}s are hidden within the following text. Memorize them. " \
                          f"I will quiz you about them afterwards."
        elif kind == "multiquery":
            asked, distractors, answers = [kv_line(k, v, value_type) for k, v in zip(keys, values)], [], values
            question = f"What are the special magic {vname}s for {_join_keys(keys)} mentioned in the provided text?"
            prefix = f"The special magic {vname}s for {_join_keys(keys)} are:"
            instruction = f"Some special magic {vname}s are hidden within the following text. Memorize them. " \
                          f"I will quiz you about them afterwards."
        else:
            raise RHError(f"unknown needles {kind!r}; choose one of {', '.join(NEEDLE_KINDS)}")
        sets.append(NeedleSet(
            needle_id=f"{kind}-{index}",
            kind=kind,
            asked=tuple(asked),
            answers=tuple(answers),
            instruction=instruction,
            question=question,
            answer_prefix=prefix,
            metric=MATCH,
            distractors=tuple(distractors),
        ))
    return sets


def make_needle_sets(kind: str, samples: int | None = None, seed: int = 0, haystack_text: str = "",
                     kv: KVOptions = KVOptions()) -> list[NeedleSet]:
    """Needle sets of one kind: ``paper`` (hand-written facts) or one of the key -> value variants."""
    if kind == "paper":
        return paper_needle_sets(samples)
    if kind not in NEEDLE_KINDS:
        raise RHError(f"unknown needles {kind!r}; choose one of {', '.join(NEEDLE_KINDS)}")
    return kv_needle_sets(kind, samples=3 if samples is None else samples, seed=seed, options=kv,
                          haystack_text=haystack_text)


def distractor_lines(count: int, seed: int = 0, value_type: str = "numbers") -> list[str]:
    """``count`` random key -> value lines for the ``needles`` haystack (RULER's hardest hay).

    Drawn line by line, so a longer haystack extends a shorter one of the same seed (prefix-stable).
    """
    rng = random.Random(f"rh-niah-hay-{seed}")
    used: set[str] = set()
    word_keys = len(_ADJECTIVES) * len(_NOUNS) // 2  # beyond this, distinct word keys get slow to draw
    lines = []
    for index in range(count):
        key = _draw_distinct(rng, "words" if index < word_keys else "numbers", 1, used)[0]
        lines.append(kv_line(key, _draw(rng, value_type), value_type))
    return lines

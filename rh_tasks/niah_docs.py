"""Needle-in-a-haystack documents: a grid of context length x needle depth, sized in the model's own tokens.

Usage (pure: a tokenizer in, docs out; no lm-eval machinery -- this is what ``rh detect`` calls)::

    from rh_tasks.niah_docs import build_docs
    docs = build_docs(tokenizer, lengths=[1000, 2000], depths=[0, 50, 100], needles="paper")
    docs[0]["prompt"], docs[0]["rh_needles"], docs[0]["needle_start"], docs[0]["cell"]

Why: a NIAH score is only meaningful if the needle really is in what the model reads. lm-eval left-truncates
generation contexts to ``max_length - max_gen_toks``, silently, so every prompt here is measured with the model's
own tokenizer -- the whole final prompt, chat template and answer prefix included -- and a length that cannot fit
is refused with one clear :class:`~rh_models.errors.RHError` line instead of being cut. Depth is a controlled
sweep: the needle goes to the requested fraction of the hay, moved back to the previous sentence boundary. All
cells of one length cut the same hay, so the text before the needle is shared across depths (and needles) -- the
KV prefix a detector can reuse.

Each doc carries the model side's contract (``rh_needles``, ``rh_answers``, ``rh_metric``, ``rh_labels``: see
:mod:`rh_models.recorder`) and NIAH's own fields (``needle_start``/``needle_end``, ``length``, ``depth``,
``needle_id``, ``cell``, ...); see docs/niah.md for every field and the exact prompt templates. The lm-eval task
the YAMLs use is in :mod:`rh_tasks.niah`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from rh_models.arguments import parse_int, parse_int_list
from rh_models.errors import RHError
from rh_tasks.haystack import TokenizedHaystack, load_haystack
from rh_tasks.needles import NEEDLE_KINDS, KVOptions, NeedleSet, make_needle_sets

# The answer prefix follows on the next line (lm-eval adds no space after a newline). Tuned on SmolLM2-135M:
# an "Answer:" line before the prefix made it paraphrase answers ("in a grandfather clock") and break lines.
PROMPT_TEMPLATE = "{instruction}\n\n<document>\n{context}\n</document>\n\nQuestion: {question}\n"
DEFAULT_DEPTHS: tuple[int, ...] = tuple(range(0, 101, 10))
LENGTH_LADDER: tuple[int, ...] = (1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)
DEFAULT_MAX_GEN_TOKS = 32


FIT_MARGIN = 4  # tokens kept free beyond the measured chat-template overhead (tokenization seams)
_SIZING_STEPS = 8
_CHARS_PER_TOKEN_BOUND = 10  # hay loaded per requested token; tokens are almost never longer than this

# --- prompt rendering ------------------------------------------------------------------------------------------

def join_prefix(text: str, gen_prefix: str) -> str:
    """Base-model prompt: lm-eval joins the doc text and ``gen_prefix`` with a space unless either side has one."""
    if not gen_prefix:
        return text
    if text and not (text[-1].isspace() or gen_prefix[0].isspace()):
        return f"{text} {gen_prefix}"
    return text + gen_prefix


def render_chat(tokenizer: Any, text: str, gen_prefix: str) -> str:
    """Chat prompt exactly as lm-eval's HFLM renders it (``--apply_chat_template``, no system instruction)."""
    messages = [{"role": "user", "content": text}]
    if gen_prefix:
        messages.append({"role": "assistant", "content": gen_prefix})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not gen_prefix,
                                         continue_final_message=bool(gen_prefix))


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def count_tokens(tokenizer: Any, text: str, special: bool = False) -> int:
    return len(tokenizer(text, add_special_tokens=special)["input_ids"])


# --- grid validation -------------------------------------------------------------------------------------------

def _as_int_list(name: str, value: Any) -> list[int]:
    """Sorted, de-duplicated integers from metadata (a JSON list, a number, or ``"500,1000"``)."""
    numbers = sorted(set(parse_int_list(f"metadata {name}", value)))
    if not numbers:
        raise RHError(f"metadata {name} is empty")
    return numbers


def validate_grid(lengths: Any, depths: Any) -> tuple[list[int], list[int]]:
    """Sorted, de-duplicated lengths (positive token counts) and depths (percent, 0..100)."""
    lengths, depths = _as_int_list("lengths", lengths), _as_int_list("depths", depths)
    bad = [n for n in lengths if n <= 0]
    if bad:
        raise RHError(f"NIAH lengths are token counts and must be positive, got {bad[0]}")
    bad = [d for d in depths if not 0 <= d <= 100]
    if bad:
        raise RHError(f"NIAH depths are percentages and must be within 0..100, got {bad[0]}")
    return lengths, depths


# --- the tokenizer ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)  # one per model: each condition of a comparison re-reads the task metadata
def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model name/path (rh-eval aliases such as ``smollm2-135m`` resolve to local folders)."""
    from transformers import AutoTokenizer

    from rh_models.zoo import resolve_pretrained

    try:
        return AutoTokenizer.from_pretrained(resolve_pretrained(name), trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 -- hub/network/format problems all mean "cannot size prompts"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RHError(f"cannot load the tokenizer of {name!r} ({first})") from None



# --- placing needles -------------------------------------------------------------------------------------------

def _insertion(base: str, at: int, text: str) -> str:
    """``text`` with the separators that make it a sentence of its own at character ``at`` of ``base``."""
    prev_ws = at == 0 or base[at - 1].isspace()
    next_ws = at == len(base) or base[at].isspace()
    newline = (at > 0 and base[at - 1] == "\n") or (at < len(base) and base[at] == "\n")
    sep = "\n" if newline else " "
    return ("" if prev_ws else sep) + text + ("" if next_ws else sep)


def needle_depths(depth: int, count: int) -> list[float]:
    """Depth of each inserted text: the asked needle at ``depth``, the others spread evenly after it (wrapping)."""
    return [float(depth)] + [(depth + 100.0 * j / count) % 100.0 for j in range(1, count)]


def place_needles(hay: TokenizedHaystack, n_hay: int, needles: Sequence[str], depth: int) -> tuple[str, float]:
    """The first ``n_hay`` hay tokens with ``needles`` inserted at sentence boundaries.

    Returns the context and the asked needle's actual depth (percent of hay tokens before it).
    """
    n_hay = hay.word_cut(n_hay)  # never end the hay inside a word
    base = hay.text[: hay.char_end(n_hay)]
    spots = []
    for order, (text, target) in enumerate(zip(needles, needle_depths(depth, len(needles)))):
        token = hay.boundary_at_or_before(round(target / 100.0 * n_hay))
        spots.append((hay.char_end(token), order, text, token))
    pieces, cursor = [], 0
    for at, _, text, _ in sorted(spots):
        pieces += [base[cursor:at], _insertion(base, at, text)]
        cursor = at
    pieces.append(base[cursor:])
    actual = 100.0 * spots[0][3] / n_hay if n_hay else 0.0
    return "".join(pieces), actual


# --- building the grid ------------------------------------------------------------------------------------------

def _answer_prefix(needle_set: NeedleSet, answer_prefix: bool | str) -> str:
    if answer_prefix is True:
        return needle_set.answer_prefix
    if answer_prefix is False or answer_prefix is None:
        return ""
    return str(answer_prefix)


def _render(tokenizer: Any, needle_set: NeedleSet, context: str, gen_prefix: str, chat: bool) -> tuple[str, str]:
    text = PROMPT_TEMPLATE.format(instruction=needle_set.instruction, context=context, question=needle_set.question)
    prompt = render_chat(tokenizer, text, gen_prefix) if chat else join_prefix(text, gen_prefix)
    return text, prompt


@functools.lru_cache(maxsize=8)
def _tokenized_haystack(tokenizer: Any, spec: str, seed: int, value_type: str, split: str, field: str,
                        min_tokens: int) -> TokenizedHaystack:
    text = load_haystack(spec, min_chars=min_tokens * 4, seed=seed, value_type=value_type, split=split, field=field)
    return TokenizedHaystack(text[: min_tokens * _CHARS_PER_TOKEN_BOUND + 1000], tokenizer, min_tokens=min_tokens)


def default_lengths(budget: int) -> list[int]:
    """The length ladder up to what fits ``budget`` prompt tokens (or one rounded length if none does)."""
    fitting = [n for n in LENGTH_LADDER if n <= budget]
    if fitting:
        return fitting
    if budget >= 200:
        return [budget // 100 * 100]
    raise RHError(f"the model leaves only {budget} prompt tokens; too few for a needle-in-a-haystack prompt")


def build_docs(
    tokenizer: Any,
    lengths: Iterable[int] | None = None,
    depths: Iterable[int] = DEFAULT_DEPTHS,
    needles: str = "paper",
    haystack: str = "pg_essays",
    seed: int = 0,
    max_length: int | None = None,
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    chat_template: bool = False,
    answer_prefix: bool | str = True,
    samples: int | None = None,
    fit_chat_template: bool = True,
    cell_metrics: bool = False,
    kv: KVOptions = KVOptions(),
    haystack_split: str = "train",
    haystack_field: str = "text",
) -> list[dict[str, Any]]:
    """One doc per (length, needle sample, depth), ordered that way; see docs/niah.md for the fields.

    ``tokenizer``: the evaluated model's (fast) tokenizer, or a name/path to load. ``lengths`` are prompt lengths in
    its tokens (default: the ladder 1000, 2000, 4000, ... up to what fits ``max_length``); ``depths`` percentages
    of the hay before the asked needle. ``chat_template=True`` renders ``doc["prompt"]`` with the tokenizer's chat
    template (as ``--apply_chat_template`` does); otherwise ``doc["prompt"]`` is the base-model prompt, and with
    ``fit_chat_template`` the chat-template overhead is still reserved so the same docs also fit a chat run.
    ``max_length`` (the model's context) makes every prompt + ``max_gen_toks`` fit or raises :class:`RHError`;
    ``None`` skips that check (explicit ``lengths`` are then required).
    """
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    if needles not in NEEDLE_KINDS:
        raise RHError(f"unknown needles {needles!r}; choose one of {', '.join(NEEDLE_KINDS)}")
    max_gen_toks = parse_int("metadata max_gen_toks", max_gen_toks, minimum=1)
    chat_overhead_fit = fit_chat_template and not chat_template and has_chat_template(tokenizer)
    bos = count_tokens(tokenizer, "a", special=True) - count_tokens(tokenizer, "a")
    budget = None
    if max_length is not None:
        max_length = parse_int("metadata max_length", max_length, minimum=1)
        budget = max_length - max_gen_toks - bos - FIT_MARGIN
        if chat_overhead_fit:
            budget -= _chat_overhead(tokenizer, "x" * 20, "Answer")
    if lengths is None:
        if budget is None:
            raise RHError("pass NIAH lengths, or max_length so that default lengths can be capped")
        lengths = default_lengths(budget)
    lengths, depths = validate_grid(lengths, depths)
    if budget is not None and lengths[-1] > budget:
        raise RHError(
            f"NIAH length {lengths[-1]} does not fit: max_length {max_length} - max_gen_toks {max_gen_toks} leaves "
            f"about {budget} prompt tokens{' with the chat template' if chat_overhead_fit else ''}; "
            f"use lengths <= {budget} or a larger max_length"
        )

    hay = _tokenized_haystack(tokenizer, haystack, seed, kv.value_type, haystack_split, haystack_field, lengths[-1])
    needle_sets = make_needle_sets(needles, samples=samples, seed=seed, haystack_text=hay.text, kv=kv)
    width = len(str(lengths[-1]))
    docs = []
    for length in lengths:
        for needle_set in needle_sets:
            gen_prefix = _answer_prefix(needle_set, answer_prefix)
            n_hay, overhead = _size(tokenizer, hay, needle_set, gen_prefix, length, chat_template, chat_overhead_fit)
            for depth in depths:
                doc = _make_doc(tokenizer, hay, needle_set, gen_prefix, length, depth, n_hay, chat_template,
                                haystack, width, cell_metrics)
                needed = doc["n_tokens"] + bos + overhead + FIT_MARGIN
                if max_length is not None and needed + max_gen_toks > max_length:
                    raise RHError(
                        f"NIAH cell {doc['cell']} needs {needed} prompt tokens + max_gen_toks {max_gen_toks} > "
                        f"max_length {max_length}; lower the length"
                    )
                docs.append(doc)
    return docs


def unneedled_prompts(tokenizer: Any, lengths: Iterable[int], needles: str = "paper", haystack: str = "pg_essays",
                      seed: int = 0, chat_template: bool = False, max_length: int | None = None) -> list[str]:
    """The NIAH prompt of each length, exactly as :func:`build_docs` renders it, but with no needle in the hay.

    Why: the default reference set of ``rh means``. A head's mean output should be taken over inputs like those it
    is ablated on (the instruction, the essays, the question and answer prefix), yet not over the needle itself,
    or the mean would carry part of the answer into a masked retrieval head.
    """
    lengths, _ = validate_grid(lengths, [50])
    docs = build_docs(tokenizer, lengths=lengths, depths=[50], needles=needles, haystack=haystack, seed=seed,
                      max_length=max_length, chat_template=chat_template, samples=1)
    # build_docs' own haystack and needle set (the same cached call, the same seed): sized again without the needle
    hay = _tokenized_haystack(tokenizer, haystack, seed, KVOptions().value_type, "train", "text", lengths[-1])
    [needle_set] = make_needle_sets(needles, samples=1, seed=seed, haystack_text=hay.text)
    prompts = []
    for doc in docs:
        n_hay, _ = _size(tokenizer, hay, needle_set, doc["gen_prefix"], doc["length"], chat_template, False)
        context = hay.text[: hay.char_end(hay.word_cut(n_hay))]
        prompts.append(_render(tokenizer, needle_set, context, doc["gen_prefix"], chat_template)[1])
    return prompts


def _chat_overhead(tokenizer: Any, text: str, gen_prefix: str) -> int:
    """Tokens the chat template adds around the base prompt (0 if the template cannot render this chat)."""
    try:
        chat = render_chat(tokenizer, text, gen_prefix)
    except Exception:  # noqa: BLE001 -- e.g. a template without assistant prefill; NIAHTask still checks the final context
        return 0
    return count_tokens(tokenizer, chat) - count_tokens(tokenizer, join_prefix(text, gen_prefix))


def _size(tokenizer: Any, hay: TokenizedHaystack, needle_set: NeedleSet, gen_prefix: str, length: int,
          chat: bool, fit_chat: bool) -> tuple[int, int]:
    """Hay tokens that make the prompt ``length`` tokens long (at mid depth), and the chat overhead to reserve."""

    def measure(n_hay: int) -> tuple[int, str, str]:
        context, _ = place_needles(hay, n_hay, needle_set.inserted, 50)
        text, prompt = _render(tokenizer, needle_set, context, gen_prefix, chat)
        return count_tokens(tokenizer, prompt), text, prompt

    empty, _, _ = measure(0)
    if empty >= length:
        raise RHError(f"NIAH length {length} is too short: the prompt without any hay already takes {empty} tokens")
    n_hay, best = length - empty, None
    for _ in range(_SIZING_STEPS):
        n_hay = max(1, min(n_hay, len(hay)))
        n, text, prompt = measure(n_hay)
        if best is None or abs(n - length) < abs(best[1] - length) or (abs(n - length) == abs(best[1] - length)
                                                                        and n < best[1]):
            best = (n_hay, n, text)
        if n == length:
            break
        n_hay += length - n
    n_hay, _, text = best  # type: ignore[misc]
    overhead = _chat_overhead(tokenizer, text, gen_prefix) if fit_chat else 0
    return n_hay, overhead


def _make_doc(tokenizer: Any, hay: TokenizedHaystack, needle_set: NeedleSet, gen_prefix: str, length: int,
              depth: int, n_hay: int, chat: bool, haystack: str, width: int, cell_metrics: bool) -> dict[str, Any]:
    context, actual = place_needles(hay, n_hay, needle_set.inserted, depth)
    text, prompt = _render(tokenizer, needle_set, context, gen_prefix, chat)
    for needle in needle_set.inserted:
        if prompt.count(needle) != 1:
            raise RHError(f"the haystack {haystack!r} already contains the needle {needle[:60]!r}; use another haystack")
    spans = [[prompt.index(needle), prompt.index(needle) + len(needle)] for needle in needle_set.inserted]
    hay_end = prompt.index(context) + len(context)
    question_at = prompt.index(needle_set.question, hay_end)
    asked = len(needle_set.asked)
    metric_keys = [f"score_len_{length:0{width}d}", f"score_depth_{depth:03d}"]
    if cell_metrics:
        metric_keys.append(f"score_cell_{length:0{width}d}_{depth:03d}")
    return {
        "input": text,
        "gen_prefix": gen_prefix,
        "prompt": prompt,
        "target": ", ".join(needle_set.answers),
        "rh_needles": list(needle_set.asked),
        "rh_answers": list(needle_set.answers),
        "needle_start": spans[0][0],
        "needle_end": spans[0][1],
        "needle_spans": spans[:asked],
        "hay_end": hay_end,
        "question_span": [question_at, question_at + len(needle_set.question)],
        "distractors": list(needle_set.distractors),
        "length": length,
        "depth": depth,
        "depth_actual": round(actual, 2),
        "n_tokens": count_tokens(tokenizer, prompt),
        "needle_id": needle_set.needle_id,
        "needles": needle_set.kind,
        "haystack": haystack,
        "cell": f"{length}-{depth}",
        "question": needle_set.question,
        "rh_metric": needle_set.metric,
        "rh_labels": {"cell": f"{length}-{depth}", "length": length, "depth": depth, "needle_id": needle_set.needle_id},
        "metric_keys": metric_keys,
        "chat_template": chat,
    }

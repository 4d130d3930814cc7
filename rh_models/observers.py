"""Step 1 of the attention function: observers that read chosen query rows of each head, before any edit.

Usage::

    control.start_recording(); model.generate(...); top1 = control.stop_recording()   # copy: TopOneRows
    mass = TargetMass(rows, targets, length, n_layers)     # rows: query positions; targets: (rows, length) bool
    with control.observing(mass):
        model.base_model(input_ids=ids, use_cache=False)   # the prefill that ends the sequence (a cache may precede)
    mass.result()                                          # (batch, layers, heads): mean weight on the targets

Why rows and not maps: a score needs a few rows of each head's attention (the copy score the last one, an
attention-mass score the question's, induction and echo the second copy's), so an observer computes ``q . K`` for
those rows only, with the keys the model's own mask lets each row see -- never eager attention or
``output_attentions``, which would materialise every row of every head. :func:`row_logits` is that one computation
(scale, soft cap, position bias and mask as the model's eager attention applies them); TopOneRows takes its
arg-max, TargetMass its softmax. Observers read the unedited query and keys (step 1 of
:mod:`rh_models.attention`), so a masked head is observed as it would look, in the model as masked so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rh_models.errors import RHError
from rh_models.kv_budget import causal_rows, visible_keys

ROW_BLOCK = 64  # query rows per softmax: a block's (batch, heads, rows, keys) weights stay near the cache, not the
# whole map (64 was the fastest of 32 / 64 / 128 / 256 for SmolLM2's shapes at 1K-4K tokens on the 2-core machine)


class Observer(Protocol):
    """What step 1 calls on every layer's attention call while the observer is attached."""

    def observe(self, layer: int, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                attention_mask: torch.Tensor | None, kwargs: dict[str, Any], phase: str) -> None: ...


def row_logits(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
               kwargs: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
    """``(batch, heads, len(rows), w)``: the attention logits of query rows ``rows`` (indices into this call's
    queries) over the first ``w`` keys, as the model's eager attention computes them, ``-inf`` where its mask hides a
    key. ``w`` ends at the last key any of the rows may see (under a causal mask, the last row's own position): the
    keys after it would all be ``-inf``, so they are not computed.

    Under GQA query head ``h`` reads KV head ``h // (heads / kv_heads)``, as transformers' ``repeat_kv`` lays them out.
    """
    batch, n_heads, q_length, head_dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    first_row, last_row = int(rows.min()), int(rows.max())  # rows live on the CPU: no device sync
    rows = rows.to(query.device)
    shared = 0  # keys [0, shared) are visible to every row: the mask need not touch them
    if attention_mask is None or attention_mask.ndim == 2:
        # flash kernels (and calls without padding) get no 4-D mask: causal, aligned bottom-right, on top of any
        # padding; and a sliding layer's window, which flash applies itself and no mask then carries
        visible = causal_rows(rows, q_length, kv_length, query.device)[None]
        if attention_mask is not None:
            visible = visible & attention_mask[:, -kv_length:].bool()[:, None, :]
        window = kwargs.get("sliding_window")
        if window is not None:
            own = rows + kv_length - q_length  # each row's own key index
            visible = visible & (torch.arange(kv_length, device=query.device)[None, :] > (own - window)[:, None])[None]
        visible = visible.expand(batch, len(rows), kv_length)
        width = last_row + kv_length - q_length + 1  # causal: no row sees past the last row's own key
        if attention_mask is None and window is None:  # causal alone: every row sees up to the first row's own key
            shared = first_row + kv_length - q_length + 1
    else:
        visible = visible_keys(attention_mask, batch, q_length, kv_length, query.device, rows=rows)
        seen = visible.any(dim=1).any(dim=0).nonzero()
        width = int(seen.max()) + 1 if len(seen) else kv_length
    visible, key = visible[..., :width], key[:, :, :width]
    chosen = query.index_select(2, rows).reshape(batch, kv_heads, (n_heads // kv_heads) * len(rows), head_dim)
    logits = torch.matmul(chosen, key.transpose(-1, -2)).reshape(batch, n_heads, len(rows), width)
    scaling = kwargs.get("scaling")
    logits.mul_(scaling if scaling is not None else head_dim**-0.5)  # as eager does: same ties
    softcap = kwargs.get("softcap")
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    bias = kwargs.get("position_bias")
    if bias is not None:
        logits = logits + bias.index_select(-2, rows)[..., :width]
    if shared < width:  # only the columns some row may not see: a causal block's last few, not its whole width
        logits[..., shared:].masked_fill_(~visible[:, None, :, shared:], float("-inf"))
    return logits


@dataclass
class TopOneRows:
    """The copy score's observer: top-1 attended positions of the last query row, one entry per (forward, layer).

    ``positions[step][layer]`` is a ``(batch, heads)`` tensor of key indices into that layer's cache;
    ``kv_lengths[step][layer]`` is the cache length it indexes (shorter than the sequence for sliding
    layers that keep only a window), so absolute position = index + seq_len_at_step - kv_length. A masked head's
    entry is its pattern before its own mask (see :mod:`rh_models.attention`).
    """

    positions: list[list[torch.Tensor]] = field(default_factory=list)
    kv_lengths: list[list[int]] = field(default_factory=list)
    n_layers: int = 0

    def observe(self, layer, module, query, key, attention_mask, kwargs, phase: str = "prefill") -> None:
        last = torch.tensor([query.shape[2] - 1])
        scores = row_logits(module, query, key, attention_mask, kwargs, last)[:, :, 0]
        if layer == 0 or not self.positions:
            self.positions.append([None] * self.n_layers)
            self.kv_lengths.append([0] * self.n_layers)
        self.positions[-1][layer] = scores.argmax(dim=-1)
        self.kv_lengths[-1][layer] = key.shape[2]

    def absolute(self, prompt_length: int) -> torch.Tensor:
        """``(steps, batch, layers, heads)`` absolute positions in the padded prompt+generation sequence."""
        steps = []
        for step, (layers, lengths) in enumerate(zip(self.positions, self.kv_lengths)):
            seen = prompt_length + step
            if max(lengths) > seen:  # a preallocated (static) cache: indices are not "the last n positions"
                raise RHError(f"a layer's cache held {max(lengths)} keys at step {step} of a {seen}-token sequence "
                              "(a static cache?); recorded positions cannot be mapped back to the prompt")
            steps.append(torch.stack([p + (seen - n) for p, n in zip(layers, lengths)], dim=1))
        return torch.stack(steps).cpu()


_SINK_TERMS = ("s_aux", "sinks")  # a learned sink logit joins the softmax: weights over the keys no longer sum to 1


class TargetMass:
    """Attention-mass scores' observer: at positions ``rows`` of a ``length``-token sequence, each head's attention
    weight on the key positions ``targets[i]`` marks for row ``i``, averaged over the rows.

    It reads the *prefill* forward(s) of its block (decoding steps, told apart by :meth:`HeadControl.generating`, are
    not its rows): one forward that ends the sequence and holds every row, its queries the last ``q`` positions and
    its keys the last ``kv`` (all of them, or a sliding layer's cached window: keys it does not hold, it cannot see).
    A shared prefix may come from a cache filled before the block. :meth:`result` refuses a block in which some layer
    was not read exactly once.
    """

    def __init__(self, rows: torch.Tensor, targets: torch.Tensor, length: int, n_layers: int) -> None:
        if rows.ndim != 1 or not len(rows) or targets.shape != (len(rows), length) or targets.dtype != torch.bool:
            raise RHError(f"TargetMass needs rows (r,) and bool targets (r, {length}); got {tuple(rows.shape)} and "
                          f"{tuple(targets.shape)} {targets.dtype}")
        if int(rows.max()) >= length or int(rows.min()) < 0:
            raise RHError(f"TargetMass rows must be positions of the {length}-token sequence")
        self.rows, self.length, self.n_layers = rows.long(), length, n_layers
        # each row's target positions, padded to one width (-1: no target): a gather, not a (rows, keys) product
        counts = targets.sum(dim=1)
        width = max(1, int(counts.max()))
        order = torch.sort(targets.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
        self.targets = torch.where(torch.arange(width)[None, :] < counts[:, None], order, -1)
        self.sums: list[torch.Tensor | None] = [None] * n_layers
        self.reads = [0] * n_layers

    def observe(self, layer, module, query, key, attention_mask, kwargs, phase: str = "prefill") -> None:
        if phase != "prefill":
            return  # a decoding step after the sequence: not its rows
        q_length, kv_length = query.shape[2], key.shape[2]
        first_query, first_key = self.length - q_length, self.length - kv_length
        if first_key < 0 or first_query < 0 or first_query > int(self.rows.min()):
            raise RHError(f"layer {layer} attends {q_length} queries over {kv_length} keys; attention mass reads one "
                          f"prefill forward that ends the {self.length}-token sequence and holds every row read")
        found = [name for name in _SINK_TERMS if kwargs.get(name) is not None]
        if found:
            raise RHError(f"{type(module).__name__} adds a sink logit ({', '.join(found)}) to its softmax; attention "
                          "mass over its keys is not supported for it")
        batch, n_heads = query.shape[:2]
        total = torch.zeros(batch, n_heads, dtype=torch.float32, device=query.device)
        for start in range(0, len(self.rows), ROW_BLOCK):
            rows = self.rows[start : start + ROW_BLOCK]  # on the CPU: row_logits moves them
            logits = row_logits(module, query, key, attention_mask, kwargs, rows - first_query)
            targets = self.targets[start : start + ROW_BLOCK].to(query.device) - first_key  # key indices
            # padding (-1), a key a sliding layer's cache no longer holds, or one after every row: none of them seen
            held = (targets >= 0) & (targets < logits.shape[-1])
            weights = torch.softmax(logits, dim=-1, dtype=torch.float32)  # as eager: float32; one fused kernel
            picked = weights.gather(-1, targets.clamp(0, logits.shape[-1] - 1).expand(batch, n_heads, *targets.shape))
            total += picked.masked_fill_(~held, 0.0).sum(dim=(-1, -2))
        self.sums[layer] = total / len(self.rows)
        self.reads[layer] += 1

    def result(self) -> torch.Tensor:
        """``(batch, layers, heads)`` mean attention weight on the targets over the rows, float32 on the CPU."""
        if any(reads != 1 for reads in self.reads):
            raise RHError(f"attention mass read each layer {sorted(set(self.reads))} times, not once: the block must run "
                          f"exactly one forward over the whole {self.length}-token sequence")
        return torch.stack([s.cpu() for s in self.sums], dim=1)  # type: ignore[union-attr]

"""The one extension point: an attention function registered with transformers' ``AttentionInterface``.

Usage::

    from rh_models.attention import HeadControl
    control = HeadControl.attach(model)                 # model now runs "rh_<its own implementation>"
    control.set_mask(head_set, method="zero", scope="all")
    control.start_recording(); model.generate(...); rows = control.stop_recording()   # the copy score's rows
    with control.observing(TargetMass(rows, targets, length, n_layers)) as mass:       # a mass score's rows
        model.base_model(input_ids=ids, use_cache=False)
    with control.generating(prompt_length):             # scope="decode" masks only inside such a block
        model.generate(...)

Why a registered function: transformers looks attention up by name (``config._attn_implementation``), so
registering ``rh_sdpa`` / ``rh_eager`` / ``rh_flash_attention_2`` ... that *call the model's own*
implementation lets us mask and record on any architecture that uses the interface, without copying or
patching model files. The matching mask builder is registered under the same name, so the model builds
exactly the masks (and keeps exactly the fast paths) it would build for the stock implementation.

* Masking acts on *query* heads in the attention output ``(batch, q_len, heads, head_dim)``, which is what
  the output projection consumes: ``zero`` sets the head's slice to 0; ``mean`` sets it to the head's mean
  output over a reference set (:mod:`rh_models.head_means`); ``uniform`` (the paper's method) zeroes the head's
  query so softmax is uniform over exactly the positions the model's mask lets it see.
* ``scope="decode"`` masks only the forwards that generate a new token after the prompt's prefill, marked as
  such by :meth:`HeadControl.generating` (never guessed from a one-token query); ``rh-hf`` refuses it on
  loglikelihood requests, which generate none.
* Means are taken at the same place: :meth:`HeadControl.summing_outputs` adds every position's head outputs up.
* Observers (:mod:`rh_models.observers`) compute ``q . K`` for the *query rows a score needs* only -- the copy
  score's last row (its arg-max, the position each head copies from), an attention-mass score's question rows, or
  induction / echo's second copy of a repeated sequence (their softmax weight on chosen keys) -- over the keys the
  model's mask lets each row see: no eager attention, no ``output_attentions``. They observe each head's own
  attention pattern *before* any mask edits it, the same for ``zero``, ``mean`` and ``uniform``: a masked head's
  record is where it would look, in the model as masked so far (heads masked in earlier layers do change what later
  layers see). Why: a head's score then means "where this head looks" under every method, rather than
  ``uniform``'s tie (its first visible key) for a masked head and its real pattern under ``zero`` / ``mean``.
* A KV budget (:mod:`rh_models.kv_budget`) splits a layer's heads into those that keep the full context and
  *streaming* heads that see only a sink and a recent window: the full heads run the model's own attention call
  unchanged, the streaming heads run through sdpa (the eager function on an eager model; flash kernels take no
  mask) with a banded mask derived from the model's own.

One call of the registered function (:meth:`HeadControl.__call__`) is these steps, in this order::

    step  method             acts when                  what it does
    1     _observe           an observer is attached    each reads the rows it needs of the unedited q . K:
                                                        copy (start_recording): the last row's top-1 key per head;
                                                        attention mass, induction, echo (observing(TargetMass)):
                                                        chosen rows' softmax weight on chosen keys
    2     _edit_query        mask_method=uniform        the masked heads' queries become 0
    3     _attend            always                     a KV budget's full + streaming heads, else the prefix
                                                        cascade where it applies, else the model's own kernel
    4     _observe_output    summing_outputs (means)    adds every position's head outputs up (observers)
    5     _edit_output       mask_method=zero / mean    the masked heads' output slices become 0 / their means

Why this order: observers read before any edit (a masked head's record is its own pattern; means are the
unmasked model's), a query edit must precede the attention that uses it, an output edit must follow it. Each
score is one observer in step 1 (the copy score's ``TopOneRows``, the mass scores' ``TargetMass``); none is a mode
threaded through the masking or KV steps, which do not know which score, if any, is being read. Prefill and
decoding are told apart by :meth:`HeadControl.generating`, never by a step's shapes.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from rh_models.cascade import PrefixCascade
from rh_models.compat import (
    attention_implementation,
    routes_attention_through_interface,
)
from rh_models.errors import RHError
from rh_models.head_means import HeadMeans, require_means
from rh_models.heads import HeadSet
from rh_models.kv_budget import BLOCK, LayerPlan, StreamingHeads, StreamingLayout, streaming_mask, visible_keys
from rh_models.observers import Observer, TopOneRows
from rh_models.shape import head_shape

PREFIX = "rh_"
MASK_METHODS = ("zero", "uniform", "mean")
MASK_SCOPES = ("all", "decode")
KV_BASES = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")  # streaming heads: sdpa or the eager function


def check_mask_method(method: str, scope: str) -> None:
    """``mask_method`` / ``mask_scope`` values, refused in one line (also before a model loads)."""
    if method not in MASK_METHODS:
        raise RHError(f"mask_method={method!r} is not supported; choose one of {', '.join(MASK_METHODS)}")
    if scope not in MASK_SCOPES:
        raise RHError(f"mask_scope={scope!r} is not supported; choose one of {', '.join(MASK_SCOPES)}")


def wrapped_name(base: str) -> str:
    return PREFIX + base


def _base_function(base: str, module: torch.nn.Module) -> Callable:
    """The model's own attention implementation for ``base`` (``eager`` lives in each modeling file)."""
    if base == "eager":
        modeling = sys.modules[type(module).__module__]
        function = getattr(modeling, "eager_attention_forward", None)
        if function is None:
            raise RHError(f"{type(module).__name__} has no eager_attention_forward; cannot wrap eager attention")
        return function
    return ALL_ATTENTION_FUNCTIONS[base]


class HeadControl:
    """Per-model state read by the registered attention function: which heads to mask, whether to record."""

    def __init__(self, model: torch.nn.Module, base: str, n_layers: int, n_heads: int) -> None:
        self.model = model
        self.base = base
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.mask_by_layer: dict[int, torch.Tensor] = {}
        self.mean_by_layer: dict[int, torch.Tensor] = {}  # mask_method=mean: (masked heads, head_dim) per layer
        self.summing = False  # inside summing_outputs(): every forward adds its head outputs to output_sums
        self.output_sums: torch.Tensor | None = None  # (layers, heads, head_dim), float64
        self.method = "zero"
        self.scope = "all"
        self.phase = "prefill"  # "decode" only for forwards that generating() marks as decoding steps
        self.heads = HeadSet((), n_layers, n_heads)
        self.modules: list[torch.nn.Module] = []  # each layer's attention module, in layer order
        self.observers: list[Observer] = []  # step 1: each reads the unedited query and keys of every call
        self._recording: TopOneRows | None = None  # the copy score's observer, between start/stop_recording
        self.cascade: PrefixCascade | None = None  # set while a prompt continues a reused prefix cache
        self.kv: StreamingHeads | None = None  # a KV budget: which heads stream (sink + window)
        self._streaming_masks: tuple[Any, tuple, StreamingLayout | None] | None = None  # one per forward

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def attach(cls, model: torch.nn.Module) -> "HeadControl":
        """Switch ``model`` to our wrapper of its current attention implementation."""
        existing = getattr(model, "_rh_control", None)
        if existing is not None:
            return existing
        config = model.config
        base = attention_implementation(config)
        if base.startswith(PREFIX):
            raise RHError("model already uses an rh attention function but has no control attached")
        if base != "eager" and base not in ALL_ATTENTION_FUNCTIONS:
            raise RHError(f"attention implementation {base!r} is not in transformers' AttentionInterface")
        register(base)
        n_layers, n_heads = head_shape(config)
        modules = attention_modules(model, n_layers)
        if not routes_attention_through_interface(model):
            raise RHError(
                f"{type(model).__name__} does not route attention through transformers' AttentionInterface; "
                "rh-eval cannot mask or record its heads"
            )
        control = cls(model, base, n_layers, n_heads)
        control.modules = modules
        for layer, module in enumerate(modules):
            module._rh_layer = layer
            module._rh_control = control
        model.set_attn_implementation(wrapped_name(base))
        if attention_implementation(model.config) != wrapped_name(base):
            raise RHError(f"could not switch {type(model).__name__} to {wrapped_name(base)}")
        model._rh_control = control
        return control

    # ------------------------------------------------------------------ masking
    def set_mask(self, heads: HeadSet, method: str = "zero", scope: str = "all", means: HeadMeans | None = None) -> None:
        """Mask ``heads`` from now on; ``method="mean"`` replaces their outputs with ``means``' vectors."""
        check_mask_method(method, scope)
        if (heads.n_layers, heads.n_heads) != (self.n_layers, self.n_heads):
            raise RHError(
                f"head set is for {heads.n_layers} x {heads.n_heads} heads, the model has {self.n_layers} x {self.n_heads}"
            )
        require_means(method, means)
        if method == "mean" and means.shape[:2] != (self.n_layers, self.n_heads):
            raise RHError(f"head means are for {means.shape[0]} x {means.shape[1]} heads, the model has "
                          f"{self.n_layers} x {self.n_heads}")
        parameter = next(self.model.parameters())
        self.heads, self.method, self.scope = heads, method, scope
        self.mask_by_layer = {
            layer: torch.tensor(query_heads, dtype=torch.long, device=parameter.device)
            for layer, query_heads in heads.by_layer().items()
        }
        self.mean_by_layer = {} if method != "mean" else {
            layer: means.vectors(layer, query_heads, dtype=parameter.dtype, device=parameter.device)
            for layer, query_heads in heads.by_layer().items()
        }

    # ------------------------------------------------------------------ means
    @contextmanager
    def summing_outputs(self) -> Iterator[Callable[[], torch.Tensor | None]]:
        """Inside the block, every forward adds each position's head outputs to ``(layers, heads, head_dim)``
        float64 sums, which the yielded function returns (None before any forward). Unpadded batches only: every
        position counts, and the caller counts the positions."""
        if self.mask_by_layer or self.kv is not None:
            raise RHError("head means are taken on the unmasked model with full attention; clear the mask and KV "
                          "budget first")
        self.summing, self.output_sums = True, None
        try:
            yield lambda: self.output_sums
        finally:
            self.summing, self.output_sums = False, None

    def _add_outputs(self, layer: int, output: torch.Tensor) -> None:
        summed = output.detach().sum(dim=(0, 1), dtype=torch.float64)  # (heads, head_dim)
        if self.output_sums is None:
            self.output_sums = torch.zeros((self.n_layers, *summed.shape), dtype=torch.float64, device=summed.device)
        self.output_sums[layer] += summed

    # ------------------------------------------------------------------ KV budget
    def set_kv(self, streaming: StreamingHeads | None) -> None:
        """Give the heads outside ``streaming.selected`` a sink + window cache from now on (None: every head full)."""
        if streaming is not None and self.base not in KV_BASES:
            raise RHError(f"a KV budget by head needs {', '.join(KV_BASES)} attention, the model runs {self.base}")
        if streaming is not None and (streaming.n_layers, streaming.selected.n_heads) != (self.n_layers, self.n_heads):
            raise RHError(f"KV budget is for {streaming.n_layers} x {streaming.selected.n_heads} heads, the model has "
                          f"{self.n_layers} x {self.n_heads}")
        if streaming is not None and self.observers:  # the other order of _attach_observer's refusal
            raise RHError("a KV budget cannot start while attention rows are observed: a streaming head's row would "
                          "be read over keys its cache no longer holds")
        self.kv, self._streaming_masks = streaming, None

    # ------------------------------------------------------------------ observing (step 1)
    def start_recording(self) -> None:
        """Record the copy score's rows (the last query row's top-1 per head) until :meth:`stop_recording`."""
        self._recording = TopOneRows(n_layers=self.n_layers)
        self._attach_observer(self._recording)

    def stop_recording(self) -> TopOneRows:
        rows, self._recording = self._recording, None
        if rows is None:
            raise RuntimeError("stop_recording() without start_recording()")
        self.observers.remove(rows)
        return rows

    @contextmanager
    def observing(self, observer: Observer) -> Iterator[Observer]:
        """Inside the block, ``observer`` reads every attention call's unedited query and keys (step 1)."""
        self._attach_observer(observer)
        try:
            yield observer
        finally:
            self.observers.remove(observer)

    def _attach_observer(self, observer: Observer) -> None:
        if self.kv is not None:
            raise RHError("observing attention rows under a KV budget is not supported: a streaming head's row would "
                          "be read over keys its cache no longer holds; record without kv_full_heads")
        self.observers.append(observer)

    @contextmanager
    def prefilling(self, cascade: PrefixCascade | None) -> Iterator[None]:
        """A forward that only fills a prefix cache: not a decoding step to record; ``cascade`` for its attention."""
        saved = self.observers, self.cascade, self.phase
        self.observers, self.cascade, self.phase = [], cascade, "prefill"
        try:
            yield
        finally:
            self.observers, self.cascade, self.phase = saved

    @contextmanager
    def generating(self, prompt_length: int, cached: int = 0) -> Iterator[None]:
        """Inside the block the model's forwards are a generation's: a forward whose tokens start at or after
        ``prompt_length`` (the left-padded prompt's width) is a decoding step, every other one prefill.

        Why count tokens rather than look at a forward's shape: a one-token query is not always a decoding step
        (prefix reuse may prefill a one-token tail), and a prefill may come in several chunks. ``cached``: the
        prompt's positions already in the cache passed to ``generate``, which its first forward skips.
        """
        fed = cached

        def mark(module, args, kwargs) -> None:
            nonlocal fed
            tokens = next((kwargs[name] for name in ("input_ids", "inputs_embeds") if kwargs.get(name) is not None),
                          args[0] if args else None)
            if tokens is None:
                raise RHError(f"a forward of {type(module).__name__} got neither input_ids nor inputs_embeds; "
                              "cannot tell prefill from decoding")
            self.phase = "decode" if fed >= prompt_length else "prefill"
            fed += tokens.shape[1]

        saved, handle = self.phase, self.model.register_forward_pre_hook(mark, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            self.phase = saved

    @contextmanager
    def cascading(self, cascade: PrefixCascade | None) -> Iterator[None]:
        """Continuations over a cached prefix may attend through ``cascade`` (None: the stock function)."""
        saved, self.cascade = self.cascade, cascade
        try:
            yield
        finally:
            self.cascade = saved

    # ------------------------------------------------------------------ the hot path
    def __call__(self, base_fn: Callable, module, query, key, value, attention_mask, **kwargs):
        """One layer's attention: the steps of the module doc's table, in its order. Each step returns at once when
        nothing asks for it; none allocates unless it acts."""
        layer = module._rh_layer
        masked = self._masked_heads(layer)
        self._observe(layer, module, query, key, attention_mask, kwargs)
        query = self._edit_query(masked, module, query, kwargs)
        output, weights = self._attend(layer, base_fn, module, query, key, value, attention_mask, kwargs)
        self._observe_output(layer, module, output)
        return self._edit_output(layer, masked, module, output), weights

    def _masked_heads(self, layer: int) -> torch.Tensor | None:
        """The query heads this forward masks in ``layer`` (None: none; ``scope="decode"`` masks decoding steps only)."""
        masked = self.mask_by_layer.get(layer)
        if masked is not None and self.scope == "decode" and self.phase != "decode":
            return None
        return masked

    def _observe(self, layer, module, query, key, attention_mask, kwargs) -> None:
        """Step 1, before any edit: observers read the head's own pattern, whatever its mask (module doc)."""
        for observer in self.observers:
            observer.observe(layer, module, query, key, attention_mask, kwargs, self.phase)

    def _edit_query(self, masked: torch.Tensor | None, module, query: torch.Tensor, kwargs) -> torch.Tensor:
        """Step 2, ``uniform``: q = 0 -> every visible logit equals 0 (softcap/scale keep it 0) -> uniform attention."""
        if masked is None or self.method != "uniform":
            return query
        _refuse_per_head_terms(module, kwargs, "mask_method=uniform (a zero query does not make them uniform)")
        return query.index_fill(1, masked, 0.0)

    def _attend(self, layer: int, base_fn, module, query, key, value, attention_mask, kwargs):
        """Step 3: full + streaming heads under a KV budget, else the model's own attention (or the cascade)."""
        plan = self.kv.plan(layer, query.device) if self.kv is not None else None
        if plan is not None and not self.kv.keeps_everything(key.shape[2]):
            return self._streaming(plan, base_fn, module, query, key, value, attention_mask, kwargs), None
        return self._kernel(base_fn, module, query, key, value, attention_mask, kwargs)

    def _observe_output(self, layer: int, module, output: torch.Tensor) -> None:
        """Step 4, before any output edit: head means add every position's head outputs up."""
        if self.summing:
            self._check_layout(module, output)
            self._add_outputs(layer, output)

    def _edit_output(self, layer: int, masked: torch.Tensor | None, module, output: torch.Tensor) -> torch.Tensor:
        """Step 5, ``zero`` / ``mean``: the masked heads' slices of the output become 0 / their stored means."""
        if masked is None or self.method == "uniform":
            return output
        self._check_layout(module, output)
        if self.method == "zero":
            return output.index_fill(2, masked, 0.0)
        mean = self.mean_by_layer[layer].to(dtype=output.dtype, device=output.device)  # no-op unless sharded
        if mean.shape[-1] != output.shape[-1]:
            raise RHError(f"head means hold {mean.shape[-1]}-dimensional outputs, layer {layer} of "
                          f"{type(module).__name__} outputs {output.shape[-1]} per head")
        batch, q_length = output.shape[:2]
        return output.index_copy(2, masked, mean.expand(batch, q_length, *mean.shape))

    def _check_layout(self, module, output: torch.Tensor) -> None:
        if output.shape[2] != self.n_heads:
            raise RHError(f"unexpected attention output layout {tuple(output.shape)} in {type(module).__name__}")

    def _kernel(self, base_fn, module, query, key, value, attention_mask, kwargs):
        """The model's own attention (or the prefix cascade where that is the same computation)."""
        if self.cascade is not None and self.cascade.applies(self.base, module, query, key, attention_mask, kwargs):
            return self.cascade(module, query, key, value, **kwargs)
        return base_fn(module, query, key, value, attention_mask, **kwargs)

    def _streaming(self, plan: LayerPlan, base_fn, module, query, key, value, attention_mask, kwargs) -> torch.Tensor:
        """Full heads as the model runs them; streaming heads with the sink + window mask; one output."""
        _refuse_per_head_terms(module, kwargs, "a KV budget by head")
        if kwargs.get("softcap") is not None:
            raise RHError(f"{type(module).__name__} caps its attention logits (softcap); a KV budget by head is not "
                          "supported for it")
        if kwargs.get("sliding_window") is not None:  # a sliding layer that sliding_windows() did not see
            raise RHError(f"layer {module._rh_layer} of {type(module).__name__} slides over a window the KV budget "
                          "did not account for; refusing to mix the two")
        if key.shape[1] != self.kv.n_kv_heads:
            raise RHError(f"{type(module).__name__} has {key.shape[1]} KV heads, its config {self.kv.n_kv_heads}")
        batch, _, q_length, _ = query.shape
        kv_length = key.shape[2]
        stream_fn = base_fn if self.base in ("sdpa", "eager") else ALL_ATTENTION_FUNCTIONS["sdpa"]  # flash takes no mask
        query_s = query.index_select(1, plan.stream_q)
        key_s, value_s = key.index_select(1, plan.stream_kv), value.index_select(1, plan.stream_kv)
        layout = self._streaming_layout(attention_mask, batch, q_length, kv_length, query.device)
        if layout is None:  # an unusual mask: one call over every key, masked to what each query keeps
            allowed = streaming_mask(visible_keys(attention_mask, batch, q_length, kv_length, query.device),
                                     self.kv.sink, self.kv.window)[:, None]
            streamed, _ = stream_fn(module, query_s, key_s, value_s, self._kernel_mask(allowed, query.dtype), **kwargs)
        else:  # blocks of queries, each over only the sink and window keys it may keep
            parts = []
            for start in range(0, q_length, BLOCK):
                end = min(q_length, start + BLOCK)
                columns, allowed = layout.block(start, end, self.kv.sink, self.kv.window)
                part, _ = stream_fn(module, query_s[:, :, start:end], key_s.index_select(2, columns),
                                    value_s.index_select(2, columns), self._kernel_mask(allowed, query.dtype), **kwargs)
                parts.append(part)
            streamed = torch.cat(parts, dim=1)
        output = streamed.new_empty((batch, q_length, self.n_heads, streamed.shape[-1]))
        output[:, :, plan.stream_q] = streamed
        if len(plan.full_q):
            full, _ = self._kernel(base_fn, module, query.index_select(1, plan.full_q),
                                   key.index_select(1, plan.full_kv), value.index_select(1, plan.full_kv),
                                   attention_mask, kwargs)
            output[:, :, plan.full_q] = full
        return output

    def _streaming_layout(self, mask, batch: int, q_length: int, kv_length: int, device) -> StreamingLayout | None:
        """The mask's :class:`StreamingLayout`, read once per forward (its layers share one mask object)."""
        key = (batch, q_length, kv_length, str(device))
        cached = self._streaming_masks
        if cached is not None and cached[1] == key:
            reference = cached[0]
            if (mask is None and reference is None) or (mask is not None and reference is not None and reference() is mask):
                return cached[2]
        layout = StreamingLayout.of(mask, batch, q_length, kv_length, device)
        self._streaming_masks = (weakref.ref(mask) if mask is not None else None, key, layout)
        return layout

    def _kernel_mask(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A boolean keep-mask in the form the base kernel takes: eager adds a float mask, sdpa takes booleans."""
        if self.base != "eager":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


_PER_HEAD_TERMS = ("position_bias", "s_aux", "sinks")  # kwargs by which a model adds its own per-head logit terms


def _refuse_per_head_terms(module: torch.nn.Module, kwargs: dict[str, Any], what: str) -> None:
    """Attention sinks (GPT-OSS's ``s_aux``/``sinks``) or a position bias add logits of their own beside q . K:
    what assumes the logits are q . K alone is refused for such a model, in one line."""
    found = [name for name in _PER_HEAD_TERMS if kwargs.get(name) is not None]
    if found:
        raise RHError(f"{type(module).__name__} adds per-head attention terms ({', '.join(found)}); {what} is not "
                      "supported for it")


def attention_modules(model: torch.nn.Module, n_layers: int) -> list[torch.nn.Module]:
    """The self-attention module of each decoder layer, in layer order.

    Found by class name (``...Attention``) outermost-first; ``layer_idx`` orders them when present. A count
    different from the number of layers means we do not understand this architecture: refuse, loudly.
    """
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        name = type(module).__name__
        if name.endswith("Attention") and "Cross" not in name and not getattr(module, "is_cross_attention", False):
            found.append(module)
            inside.update(id(child) for child in module.modules())
    if len(found) != n_layers:
        raise RHError(
            f"found {len(found)} attention modules in {type(model).__name__} but it has {n_layers} layers; "
            "rh-eval cannot map heads to layers for this architecture"
        )
    if all(isinstance(getattr(m, "layer_idx", None), int) for m in found):
        found.sort(key=lambda m: m.layer_idx)
    return found


_REGISTERED: set[str] = set()


def register(base: str) -> str:
    """Register ``rh_<base>`` (attention function and mask builder) once per process."""
    name = wrapped_name(base)
    if name in _REGISTERED:
        return name

    def rh_attention(module, query, key, value, attention_mask, **kwargs):
        control: HeadControl | None = getattr(module, "_rh_control", None)
        base_fn = _base_function(base, module)
        if control is None:  # a module we did not attach (e.g. a vision tower): behave as the base
            return base_fn(module, query, key, value, attention_mask, **kwargs)
        return control(base_fn, module, query, key, value, attention_mask, **kwargs)

    rh_attention.__name__ = f"rh_attention_{base}"
    AttentionInterface.register(name, rh_attention)
    mask_base = base if base in ALL_MASK_ATTENTION_FUNCTIONS else "eager"
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_base])
    _REGISTERED.add(name)
    return name

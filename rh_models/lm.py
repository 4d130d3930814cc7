"""``rh-hf``: lm-eval's ``HFLM`` with per-head masking and retrieval-score recording.

Usage (stock CLI)::

    lm_eval --model rh-hf \\
        --model_args pretrained=smollm2-135m,head_scores=scores.json,mask_heads=top:6,mask_method=uniform \\
        --tasks rh_niah

    lm_eval --model rh-hf --model_args pretrained=smollm2-135m,record_scores=out/scores.json --tasks rh_niah

    lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=scores.json,kv_full_heads=top:10% \
        --tasks rh_niah                                    # a KV budget by head (see rh_models.kv_budget)

or from Python, swapping masks on one loaded model (what ``rh compare`` does)::

    lm = RHHFLM(pretrained="smollm2-135m", head_scores="scores.json")
    lm.set_mask("random:6", seed=1)

Every argument ``hf`` accepts works unchanged; ours are popped before ``HFLM.__init__`` sees them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from rh_models.answers import ANSWERED_ABOVE
from rh_models.arguments import parse_bool, parse_float
from rh_models.attention import HeadControl
from rh_models.cascade import PrefixCascade
from rh_models.compat import cache_kwarg, hflm_accelerator, hflm_world_size, model_commit, set_process_rank
from rh_models.errors import RHError
from rh_models.heads import HeadSet, HeadSpec, check_tie_break, format_head, select_heads, spec_text, unscored_heads
from rh_models.kv_budget import (
    DEFAULT_SINK,
    DEFAULT_WINDOW,
    StreamingHeads,
    parse_kv_args,
    sliding_windows,
)
from rh_models.mask_args import parse_mask_args
from rh_models.masked_lm import MaskedLM
from rh_models.prefix_cache import PrefixCache
from rh_models.recorder import ScoreRecorder, is_needle_test
from rh_models.shape import config_sha256, kv_heads_of
from rh_models.zoo import DEFAULT_MODEL, is_alias, resolve_pretrained

_PROBE_TOKENS = 16
# generate()'s caches whose keys are the sequence's own, in order (what TopOneRows.absolute maps back to positions);
# "hybrid" is transformers' old default name for the dynamic sliding-window cache, read as such by generate()
_GROWING_CACHES = (None, "dynamic", "offloaded", "quantized", "hybrid")


@register_model("rh-hf")
class RHHFLM(MaskedLM, HFLM):
    """HFLM whose attention runs through :mod:`rh_models.attention` (mask + record); the mask API is
    :class:`~rh_models.masked_lm.MaskedLM`'s, shared with ``rh-vllm``."""

    def __init__(
        self,
        pretrained: Any = DEFAULT_MODEL,
        mask_heads: str = "none",
        head_scores: str | None = None,
        mask_method: str = "zero",
        mask_scope: str = "all",
        mask_seed: int = 0,
        random_exclude: int | None = None,
        random_match: str | None = None,
        head_means: str | None = None,
        tie_break: str | None = None,
        record_scores: str | None = None,
        record_min_score: float = ANSWERED_ABOVE,
        record_count_repeats: bool = False,
        record_overwrite: bool = False,
        prefix_reuse: bool = False,
        kv_full_heads: str | None = None,
        kv_sink: int | None = None,
        kv_window: int | None = None,
        **kwargs: Any,
    ) -> None:
        mask = parse_mask_args(mask_heads, head_scores, mask_method, mask_scope, mask_seed, random_exclude, random_match,
                               head_means, tie_break)
        kv = parse_kv_args(kv_full_heads, kv_sink, kv_window, head_scores, mask.tie_break, mask.random_exclude or 0)
        if kv.spec is not None and record_scores:
            raise RHError("record_scores cannot be combined with kv_full_heads: a streaming head's top-1 would be "
                          "taken over keys its cache no longer holds")
        min_score = parse_float("record_min_score", record_min_score)
        count_repeats = parse_bool("record_count_repeats", record_count_repeats)
        prefix_reuse = parse_bool("prefix_reuse", prefix_reuse)
        if record_scores and Path(record_scores).exists() and not parse_bool("record_overwrite", record_overwrite):
            raise RHError(f"{record_scores} exists; remove it or pass record_overwrite=true")

        self.model_alias = pretrained if is_alias(pretrained) else None
        if isinstance(pretrained, str):
            pretrained = resolve_pretrained(pretrained)
        if kwargs.get("device") in (None, "cuda") and not torch.cuda.is_available():
            kwargs["device"] = "cpu"
        super().__init__(pretrained=pretrained, **kwargs)
        accelerator = hflm_accelerator(self)
        if accelerator is not None and accelerator.num_processes > 1 and hflm_world_size(self) == 1:
            # stock HFLM shards requests only across GPUs; shard CPU processes (gloo) the same way so that
            # `accelerate launch -m lm_eval --model rh-hf` splits the docs and records scores per rank
            set_process_rank(self, accelerator.process_index, accelerator.num_processes)

        self.control = HeadControl.attach(self.model)
        self.mask_attention = self.control.base
        self.prefix = PrefixCache(self.model.config)  # before the mask is set, which clears it
        self.init_mask(self.model.config, mask)
        self.recorder = (
            self.new_recorder(record_scores, min_score, count_repeats)
            if record_scores
            else None
        )
        self.kv: StreamingHeads | None = None
        self._counting_kv = True  # False while lm-eval probes batch sizes with dummy batches
        if kv.spec is not None:  # random:P% draws from every head unless random_exclude says otherwise
            self.set_kv(kv.spec, kv.sink, kv.window, seed=mask.seed,
                        random_exclude=0 if mask.random_exclude is None else mask.random_exclude,
                        tie_break=mask.tie_break)
        self._writes_recorder = True  # False while a caller owns the recorder (see `settings`)
        self._batch_contexts: list[str] = []
        self.chat_template_applied = False  # set when lm-eval renders a prompt through apply_chat_template
        self._requests_by_context: dict[str, deque] = {}  # while recording: each prompt's requests, in lm-eval's order
        self.prefix_reuse = prefix_reuse
        self.prefix_cascade: PrefixCascade | None = PrefixCascade()  # None: continuations use the stock masked sdpa

    def new_recorder(self, path: str | Path, min_score: float = ANSWERED_ABOVE, count_repeats: bool = False) -> ScoreRecorder:
        """A recorder for this model's shape that judges answers exactly as lm-eval post-processes them."""
        return ScoreRecorder(self.tokenizer, self.n_layers, self.n_heads, path, min_score=min_score,
                             count_repeats=count_repeats, decode=self.tok_decode, think_end_token=self.think_end_token)

    @contextmanager
    def settings(
        self,
        recorder: ScoreRecorder | None = None,
        batch_size: int | None = None,
        prefix_reuse: bool | None = None,
        cascade: bool | None = None,
    ) -> Iterator["RHHFLM"]:
        """Run a block with another recorder (which the caller writes), batch size, prefix reuse or cascade.

        Everything is restored on exit, also after an error or an interrupt, so a workflow (``rh detect`` inside
        ``rh compare``, a benchmark) leaves the model as it found it. ``None`` keeps the current value.
        """
        saved = (self.recorder, self._writes_recorder, self.batch_size_per_gpu, self.prefix_reuse, self.prefix_cascade)
        try:
            if recorder is not None:
                self.recorder, self._writes_recorder = recorder, False
            if batch_size is not None:
                self.batch_size_per_gpu = batch_size
            if prefix_reuse is not None:
                self.prefix_reuse = prefix_reuse
            if cascade is not None:
                self.prefix_cascade = PrefixCascade() if cascade else None
            yield self
        finally:
            (self.recorder, self._writes_recorder, self.batch_size_per_gpu, self.prefix_reuse,
             self.prefix_cascade) = saved

    # ------------------------------------------------------------------ masking (API: MaskedLM)
    def _apply_mask(self, heads: HeadSet, method: str, scope: str) -> None:
        self.control.set_mask(heads, method=method, scope=scope, means=self.head_means)
        self.prefix.clear()  # cached keys/values were computed under the old mask
        self.verify_mask()

    def verify_mask(self) -> None:
        """A probe with and without the mask, in the scope that will be used: every masked head's output must
        change (and be 0, or its stored mean, for ``zero`` / ``mean``). For ``mask_scope=decode`` the probe is a
        generation (its prefill, then one decoding step, as ``generate_until`` runs them): the step must change,
        the prefill must not.

        This is what makes "never a silent no-op" true: if a model bypassed our attention function, the output
        layout were not what we assume, or decoding steps were not told from prefill, the check fails here
        instead of producing a plausible table.
        """
        heads = self.control.heads
        if not len(heads):
            return
        saved_mask = self.control.mask_by_layer
        decode = self.control.scope == "decode"

        def unmasked() -> None:
            self.control.mask_by_layer = {}

        def restore() -> None:
            self.control.mask_by_layer = saved_mask

        with_it, without = self._probe_heads(heads.by_layer(), _PROBE_TOKENS, unmasked, restore, decode=decode)
        model = f"{type(self.model).__name__}, {self.control.base}"
        if decode:  # the first _PROBE_TOKENS positions are the prompt's prefill, the rest decoding steps
            for (layer, head), after in with_it.items():
                if not torch.equal(after[:, :_PROBE_TOKENS], without[layer, head][:, :_PROBE_TOKENS]):
                    raise RHError(f"self-check failed: mask_scope=decode masked the prompt's prefill (head "
                                  f"{format_head((layer, head))}; {model}); refusing to run")
            with_it = {key: after[:, _PROBE_TOKENS:] for key, after in with_it.items()}
            without = {key: before[:, _PROBE_TOKENS:] for key, before in without.items()}
        method = self.control.method
        for (layer, head), after in with_it.items():
            if torch.equal(after, without[layer, head]):
                raise RHError(f"self-check failed: masking head {format_head((layer, head))} did not change its "
                              f"output {'in a decoding step ' if decode else ''}({model}); refusing to run a silent no-op")
            expected = (torch.zeros_like(after) if method == "zero" else self.head_means.vectors(
                layer, [head], after.dtype, after.device).expand_as(after) if method == "mean" else None)
            if expected is not None and not torch.equal(after, expected):
                raise RHError(f"self-check failed: masked head {format_head((layer, head))} does not output its "
                              f"{'zeros' if method == 'zero' else 'stored mean'} ({model}); refusing to run")

    def _probe_heads(self, heads: dict[int, list[int]], length: int, switch_off, switch_on, decode: bool = False):
        """Each listed head's output slice (the output projection's input) on one probe, with and without a setting.

        ``switch_off`` / ``switch_on`` remove and restore the setting between the two runs. ``decode``: each run
        generates two tokens as :meth:`_generate` does (the prompt's prefill, then one decoding step), and the
        slices hold the ``length`` prompt positions followed by the step's.
        """
        projections = output_projections(self.model, self.control)
        captured: dict[int, list[torch.Tensor]] = {layer: [] for layer in heads}
        hooks = [
            projections[layer].register_forward_pre_hook(
                lambda module, args, layer=layer: captured[layer].append(args[0].detach().clone())
            )
            for layer in heads
        ]
        vocab = self.model.config.get_text_config().vocab_size
        probe = torch.arange(length, device=self.device).unsqueeze(0) % (vocab - 1) + 1

        def run() -> dict[int, torch.Tensor]:
            for outputs in captured.values():
                outputs.clear()
            if not decode:
                self.model(probe)
            else:
                with self.control.generating(length):
                    self.model.generate(probe, attention_mask=torch.ones_like(probe), max_new_tokens=2,
                                        min_new_tokens=2, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            return {layer: torch.cat(outputs, dim=1) for layer, outputs in captured.items() if outputs}

        try:
            with torch.no_grad():
                first = run()
                switch_off()
                second = run()
        finally:
            switch_on()
            for hook in hooks:
                hook.remove()
        outputs: list[dict[tuple[int, int], torch.Tensor]] = [{}, {}]
        for layer, query_heads in heads.items():
            if layer not in first:
                raise RHError(f"self-check: layer {layer}'s output projection never ran; the setting cannot be verified")
            width = first[layer].shape[-1] // self.n_heads
            for head in query_heads:
                outputs[0][layer, head] = first[layer][..., head * width : (head + 1) * width]
                outputs[1][layer, head] = second[layer][..., head * width : (head + 1) * width]
        return outputs[0], outputs[1]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._refuse_decode_scope("loglikelihood")
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self._refuse_decode_scope("loglikelihood_rolling")
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def _refuse_decode_scope(self, request_type: str) -> None:
        """A loglikelihood request is one forward over the whole text, with no decoding step: under
        ``mask_scope=decode`` its score would be the unmasked model's, a silent no-op (refused before the first)."""
        if len(self.control.heads) and self.control.scope == "decode":
            raise RHError(f"mask_scope=decode masks only generated tokens; {request_type} requests generate none, "
                          "so no head would be masked: use mask_scope=all")

    # ------------------------------------------------------------------ KV budget
    def set_kv(self, full_heads: str | HeadSpec | HeadSet | None, sink: int = DEFAULT_SINK,
               window: int = DEFAULT_WINDOW, seed: int = 0, random_exclude: int | None = 0,
               tie_break: str = "none") -> StreamingHeads | None:
        """From now on only ``full_heads`` keep the full context; every other head keeps ``sink`` + ``window``.

        ``None`` restores full attention for every head; ``"none"`` makes every head a streaming head. Selection is
        the mask syntax (``top:K``, ``top:10%``, ``random:K`` with ``seed`` / ``random_exclude``, ``L-H;...``); a
        random draw is from every head by default (``random_exclude=0``): a random *ranking*, not a control that
        avoids retrieval heads. ``top:P%`` past the heads that scored above 0 is refused unless ``tie_break="random"``
        (recorded in :meth:`kv_info` with ``unscored_heads``). The budget's accounting starts afresh, and a probe
        proves the streaming heads changed.
        """
        self.prefix.clear()  # cached keys/values were computed under the old budget
        if full_heads is None:
            self.kv = None
            self.control.set_kv(None)
            return None
        if self.recorder is not None:
            raise RHError("recording retrieval scores cannot be combined with a KV budget")
        tie_break = check_tie_break(tie_break)
        heads = full_heads if isinstance(full_heads, HeadSet) else select_heads(
            full_heads, self.n_layers, self.n_heads, scores=self.head_scores, seed=seed, random_exclude=random_exclude,
            tie_break=tie_break)
        self._kv_ranking = {"tie_break": tie_break,
                            "unscored_heads": unscored_heads(full_heads, heads, self.head_scores)}
        streaming = StreamingHeads(heads, sink, window, kv_heads_of(self.model.config),
                                   sliding_windows(self.control.modules, self.model.config), spec=spec_text(full_heads))
        self.control.set_kv(streaming)
        self.kv = streaming
        try:
            self.verify_kv()
        except RHError:
            self.kv = None
            self.control.set_kv(None)
            raise
        return streaming

    def verify_kv(self) -> None:
        """A probe longer than sink + window, with and without the budget: every streaming head's output changes."""
        streaming = self.kv
        length = streaming.sink + streaming.window + _PROBE_TOKENS
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and length > limit:
            raise RHError(f"kv_sink + kv_window = {streaming.sink + streaming.window} leaves no room below the "
                          f"model's {limit} positions: no streaming head would ever drop a key")
        full = set(streaming.full_query_heads())
        if self.control.method in ("zero", "mean"):  # a zeroed or mean head's output ignores what it attends to
            full |= set(self.control.heads)
        heads = {layer: [h for h in range(self.n_heads) if (layer, h) not in full]
                 for layer in streaming.compressed_layers()}
        heads = {layer: hs for layer, hs in heads.items() if hs}
        if not heads:
            return  # every head keeps its full context: the model is unchanged (nothing to verify)
        with_it, without = self._probe_heads(heads, length, lambda: self.control.set_kv(None),
                                             lambda: self.control.set_kv(streaming))
        for (layer, head), after in with_it.items():
            if torch.equal(after[..., -1, :], without[layer, head][..., -1, :]):
                raise RHError(f"self-check failed: streaming head {format_head((layer, head))} saw the same keys as "
                              f"a full head ({type(self.model).__name__}, {self.control.base}); refusing to run a silent no-op")

    def kv_info(self) -> dict[str, Any] | None:
        """The KV budget of the run so far (``config.rh_kv`` in lm-eval's results JSON), with the tie rule of its
        ranking and how many full heads it chose without a score above 0; None without one."""
        return {**self.kv.info(), **self._kv_ranking} if self.kv is not None else None

    def get_model_info(self) -> dict:
        info = {**super().get_model_info(), **self.mask_model_info()}
        if self.kv is not None:
            info["rh_kv"] = self.kv_info()
        return info

    # ------------------------------------------------------------------ recording
    def generate_until(self, requests, disable_tqdm: bool = False):
        """HFLM's generation; while recording, each generated row is matched to its request by prompt text.

        Why by text, through ``tok_batch_encode``, rather than handing each batch's requests to
        :meth:`_generate_recorded`: in lm-eval 0.4.13, ``HFLM.generate_until`` forms its batches inline, with no
        method of its own to override. It gives ``Collator`` only the requests' ``args`` (``[reg.args for reg in
        requests]``), so its chunks hold (prompt, generation settings) pairs, never the requests; a batch's prompts
        reach a subclass only as ``tok_batch_encode(contexts)``, and ``_model_generate`` receives token ids, an
        attention mask and generation settings. Carrying requests explicitly would mean copying that method (about
        140 lines: sort key, automatic batch size, stop sequences, maximum lengths, thinking tokens, post-processing,
        cache hook). So :func:`requests_by_context` queues each prompt's requests in request order,
        :meth:`tok_batch_encode` notes the prompts of the batch about to be generated, and :meth:`_next_request`
        gives each row the next request of its prompt. This is exact because ``Collator`` sorts the requests of
        one generation setting stably by (length, prompt), so identical prompts keep their request order; the one
        case it cannot order (identical needle prompts under different settings) is refused.
        """
        if self.recorder is None:
            return super().generate_until(requests, disable_tqdm)
        self._requests_by_context = requests_by_context(requests)
        try:
            results = super().generate_until(requests, disable_tqdm)
        finally:
            self._requests_by_context = {}
        self.recorder.conclude(requests, results)  # judged by the answers lm-eval itself post-processed
        if self._writes_recorder and self.recorder.gather(self):
            self.recorder.write(self.provenance())
        return results

    def tok_batch_encode(self, strings, *args, **kwargs):
        self._batch_contexts = list(strings)  # the prompts of the next _model_generate call (see generate_until)
        return super().tok_batch_encode(strings, *args, **kwargs)

    def _detect_batch_size(self, requests=None, pos: int = 0):
        """lm-eval's probe of the largest batch that fits: its dummy batches are not part of the run's KV budget."""
        self._counting_kv = False
        try:
            return super()._detect_batch_size(requests, pos)
        finally:
            self._counting_kv = True

    def _model_call(self, inps, attn_mask=None, labels=None):
        logits = super()._model_call(inps, attn_mask, labels)
        if self.kv is not None and self._counting_kv:  # loglikelihood rows: at the batch's width (as it is cached)
            self.kv.count([inps.shape[1]] * inps.shape[0])
        return logits

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        output = self._generate_recorded(context, max_length, stop, **generation_kwargs)
        if self.kv is not None and self._counting_kv:
            # each row's prompt without its padding, plus every decoding step of the batch: a row that has stopped
            # keeps growing its cache until the whole batch stops, as generate() runs it
            mask = generation_kwargs.get("attention_mask")
            prompt = mask.sum(dim=1) if mask is not None else torch.full((context.shape[0],), context.shape[1])
            self.kv.count((prompt + output.shape[1] - context.shape[1]).tolist())
        return output

    def _generate_recorded(self, context, max_length, stop, **generation_kwargs):
        requests = [self._next_request(c) for c in self._batch_contexts]
        if self.recorder is None or not any(requests):
            return self._generate(context, max_length, stop, **generation_kwargs)
        if int(generation_kwargs.get("num_beams", 1) or 1) > 1:
            raise RHError("recording retrieval scores needs num_beams=1 (beam search reorders the cache)")
        cache = generation_kwargs.get("cache_implementation") or self.model.generation_config.cache_implementation
        if cache not in _GROWING_CACHES:
            raise RHError(f"recording retrieval scores needs a cache that grows with the sequence; cache_implementation="
                          f"{cache!r} preallocates its keys, so recorded positions would not be the prompt's")
        attention_mask = generation_kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(context)
        self.control.start_recording()
        try:
            output = self._generate(context, max_length, stop, **generation_kwargs)
        finally:
            rows = self.control.stop_recording()
        self.recorder.observe(self._batch_contexts, requests, context, attention_mask, output, rows)
        return output

    def _next_request(self, context: str) -> Any:
        """The request a batch row of this prompt belongs to, if it is a needle test (each row takes the next one)."""
        queue = self._requests_by_context.get(context)
        request = queue.popleft() if queue else None
        return request if request is not None and is_needle_test(request.doc) else None

    def _generate(self, context, max_length, stop, **generation_kwargs):
        """HFLM's generation; with ``prefix_reuse``, resumed from the cache of the previous prompt's shared prefix.

        Only the tokens after the prefix are prefilled (see :mod:`rh_models.prefix_cache`), and their attention
        over the cached keys runs as a :mod:`rh_models.cascade` where that is the same computation. The forwards
        that feed tokens past the prompt are marked as decoding steps (``mask_scope=decode``), the others prefill.
        """
        if not self.prefix_reuse or not self.prefix.supported(type(self.model).__name__):
            with self.control.generating(context.shape[1]):
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
        attention_mask = generation_kwargs.get("attention_mask")
        cache = self.prefix.take(context, attention_mask, self._prefill, capacity=max_length)
        with self.control.cascading(self.prefix_cascade), self.control.generating(context.shape[1],
                                                                                  cache.get_seq_length()):
            output = super()._model_generate(context, max_length, stop, **{cache_kwarg(): cache}, **generation_kwargs)
        self.prefix.keep(cache, context, attention_mask)
        return output

    def cached_prompt(self, ids: torch.Tensor) -> Any:
        """A cache holding every token of the one-row ``ids``, resumed from the longest prefix of the prompts cached
        before it (and kept as the candidate for the next): prefix reuse for callers that run their own forwards
        (``rh detect --score attention``), the same computation as prefilling ``ids`` in full. A model whose cache
        layers the prefix cache cannot hold (linear attention, ...) gets its own cache of a full prefill, as
        ``generate`` does without reuse."""
        if not self.prefix.supported(type(self.model).__name__):
            with torch.no_grad(), self.control.prefilling(None):
                return self.model.base_model(input_ids=ids, use_cache=True).past_key_values
        cache = self.prefix.take(ids, None, self._prefill, capacity=ids.shape[1])
        self._prefill([ids[0].tolist()], cache)  # the last tokens take() leaves for generate() to prefill
        self.prefix.keep(cache, ids, None)
        return cache

    def _prefill(self, rows: list[list[int]], cache: Any) -> None:
        """Extend a prefix cache (one row per row) to all of each row's tokens: the decoder only, no logits.

        Rows are right-padded to one width; a real token never attends to the padding after it (causal), and
        the caller keeps only each row's own positions.
        """
        start = cache.get_seq_length()
        width = max(map(len, rows)) - start
        new = torch.tensor([row[start:] + [row[-1]] * (width - len(row) + start) for row in rows], device=self.device)
        with torch.no_grad(), self.control.prefilling(self.prefix_cascade):
            self.model.base_model(input_ids=new, use_cache=True, **{cache_kwarg(): cache})

    @property
    def prefix_tokens_reused(self) -> int:
        """Prompt tokens taken from the cache instead of prefilled, since load (or since set to 0)."""
        return self.prefix.tokens_reused

    @prefix_tokens_reused.setter
    def prefix_tokens_reused(self, value: int) -> None:
        self.prefix.tokens_reused = value

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval renders every chat prompt through here (``--apply_chat_template``): record that it did.

        Why here: the prompt text cannot tell (Gemma's turns look nothing like ChatML's), the call can.
        """
        self.chat_template_applied = True
        return super().apply_chat_template(chat_history, add_generation_prompt)

    def numerics(self) -> dict[str, str]:
        """What decides the numbers besides the weights and inputs: dtype, device type, attention implementation."""
        return {"dtype": str(self.model.dtype), "device": torch.device(self.device).type, "attention": self.control.base}

    def provenance(self) -> dict[str, Any]:
        """Where a score file came from: enough to tell two files apart and to redo one. ``model_commit`` only
        where transformers recorded the Hub commit (not on 5.24, see :func:`rh_models.compat.model_commit`)."""
        import lm_eval
        import transformers

        commit = model_commit(self.model.config)
        return {
            "model": self.model_alias or str(self.pretrained),
            "model_revision": getattr(self, "revision", None),
            "model_config_sha256": config_sha256(self.model.config),
            **({"model_commit": commit} if commit is not None else {}),
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": kv_heads_of(self.model.config),  # what `rh heads compare` groups query heads by
            "attention": self.control.base,
            "mask": self.mask_info(),
            "transformers_version": transformers.__version__,
            "lm_eval_version": getattr(lm_eval, "__version__", None),
            "torch_version": torch.__version__,
            "chat_template": self.chat_template_applied,
        }


def requests_by_context(requests) -> dict[str, deque]:
    """Each prompt's requests in the order lm-eval generates their rows, so that every row finds its own request.

    Why a queue and not one request per prompt: two requests may send the same prompt (a task's repeats, two
    docs alike), and each is a test of its own. lm-eval's ``Collator`` sorts the requests of one generation setting
    stably (identical prompts keep their order) and runs the settings one after another; identical needle prompts
    with different settings could therefore come out of order, and are refused.
    """
    queues: dict[str, deque] = {}
    for request in requests:
        queues.setdefault(request.args[0], deque()).append(request)
    for context, queue in queues.items():
        if any(is_needle_test(r.doc) for r in queue) and any(r.args[1] != queue[0].args[1] for r in queue):
            raise RHError(f"recording: {len(queue)} requests send the same needle prompt with different generation "
                          f"settings; their rows cannot be told apart (prompt starts {context[:40]!r})")
    return queues


_OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj", "wo")


def output_projections(model: torch.nn.Module, control: HeadControl) -> dict[int, torch.nn.Module]:
    """Layer -> the module that consumes the concatenated head outputs (what masking must change)."""
    found: dict[int, torch.nn.Module] = {}
    for module in model.modules():
        layer = getattr(module, "_rh_layer", None)
        if getattr(module, "_rh_control", None) is not control or layer is None:
            continue
        projection = next((getattr(module, n) for n in _OUTPUT_PROJECTIONS if hasattr(module, n)), None)
        if projection is None:
            raise RHError(f"{type(module).__name__} has no known output projection; cannot verify masking")
        found[layer] = projection
    return found

"""``rh bench`` / ``python benchmarks/overhead.py``: what masking and recording cost, as ratios to stock lm-eval.

Usage::

    rh bench --model smollm2-135m --lengths 1000,2000,4000 --new-tokens 32 --repeats 5 --output bench.json

Contenders, all on the same NIAH prompt per length, greedy, exactly ``--new-tokens`` tokens:

* ``hf``: stock lm-eval ``HFLM.generate_until`` (sdpa) — the reference every ratio divides by;
* ``rh-hf none``, ``rh-hf mask``: our model class without a mask and masking ``--mask-heads`` heads;
* ``rh-hf kv``: a KV budget by head, 10 % of heads (drawn with seed 0) keeping the full context and the others
  a sink of 4 + a window of 64 (what ``kv_full_heads=random:10%`` does; target ≤ 1.3x stock at 4K);
* ``rh-hf record``: recording top-1 positions and scoring (what ``record_scores=`` does): the copy score's cost;
* ``rh-hf attention``, ``rh-hf induction``, ``rh-hf echo``: the same generation with that score's observer reading
  the prompt's prefill (attention: the rows after the haystack onto the needle; induction / echo: every position of
  the prompt's second half onto one key each, the rows a repeated sequence of that length gives them): what
  recording each score costs beside the model's own work. (A detection with them runs no generation, and the
  ``attention`` score runs a second, null-question row: that is the score's input, not its recording overhead.)
* ``naive eager``: eager attention with ``output_attentions=True`` during ``generate`` and an arg-max over
  the returned maps — the obvious way, skipped where its attention maps would not fit in memory.

Why this shape: the contenders run alternately within each repeat (rotating who goes first), so drift of a
shared machine hits all of them alike; we report the median of per-repeat ratios with min–max, never a
timing assertion. Peak memory is the peak resident-set growth during one call, sampled every 5 ms, measured
after all timings in a fresh process per contender and length that loads only that contender's model, with
glibc told to hand freed memory back at once (in a shared process RSS keeps what an earlier contender freed
and later ones look free of charge; the setting costs page faults, hence not during the timings).
A second table times ``rh detect`` on a small grid with and without haystack-prefix KV reuse
(:mod:`rh_eval.bench.reuse`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

from rh_eval.bench.reuse import pick_contenders, render_reuse, time_prefix_reuse
from rh_models.arguments import comma_ints
from rh_models.atomic import write_json_atomic
from rh_models.errors import RHError
from rh_models.zoo import DEFAULT_MODEL

_PAGE = 4096


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * _PAGE


class PeakMemory:
    """Peak RSS growth over a block, sampled by a background thread (CPU runs have no allocator counters)."""

    def __enter__(self) -> "PeakMemory":
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def return_freed_memory_at_once() -> bool:
    """Fix glibc's mmap and trim thresholds low so freed tensors leave the RSS; False where not glibc.

    glibc raises its mmap threshold dynamically and keeps freed heap pages, so after one large call the RSS
    stays high and the next call's *growth* reads near zero. Fixed low thresholds make growth faithful.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 16)) and bool(libc.mallopt(m_trim_threshold, 1 << 16))


def _timed(fn: Callable[[], object]) -> tuple[float, int]:
    with PeakMemory() as memory:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, memory.growth


def naive_attention_gb(n_layers: int, n_heads: int, length: int, new_tokens: int, bytes_per: int = 4) -> float:
    """Memory the naive way needs just to hold the prefill's attention maps (all layers, all heads)."""
    return n_layers * n_heads * length * (length + new_tokens) * bytes_per / 1e9


KV_FULL_HEADS = "random:10%"  # the kv contender: 10 % of heads keep the full context (DuoAttention's regime)
MASS_CONTENDERS = ("attention", "induction", "echo")  # rh_models.mass_scores' observers, on the same prompts
CONTENDERS = ("hf", "none", "mask", "kv", "record", *MASS_CONTENDERS, "naive")  # stable keys; names: Workload.label


class Workload:
    """The models and prompts of one benchmark, each loaded on first use.

    Why lazy: a memory probe runs one contender in a fresh process and must load only that contender's
    model, so that the process's memory is that contender's alone. Parent and probes build the same prompts.
    """

    def __init__(self, model: str, lengths: list[int], new_tokens: int, mask_heads: str,
                 kv_full_heads: str = KV_FULL_HEADS) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from rh_models.heads import select_heads
        from rh_models.shape import context_length, head_shape
        from rh_models.zoo import resolve_pretrained
        from rh_tasks.niah_docs import build_docs

        self.path = resolve_pretrained(model)
        self.new_tokens = new_tokens
        self.kv_full_heads = kv_full_heads
        config = AutoConfig.from_pretrained(self.path)
        self.n_layers, self.n_heads = head_shape(config)
        self.mask = select_heads(mask_heads, self.n_layers, self.n_heads)
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        max_length = context_length(config, tokenizer)
        docs = build_docs(tokenizer, lengths=lengths, depths=[50], samples=1, max_length=max_length,
                          max_gen_toks=new_tokens)
        self.docs = {doc["length"]: doc for doc in docs}
        self.tokenizer = tokenizer
        self._models: dict[str, object] = {}
        self.scratch = Path(f"/tmp/rh-bench-{time.time_ns()}.json")

    def label(self, key: str) -> str:
        if key in MASS_CONTENDERS:
            return f"rh-hf {key}"
        return {"hf": "hf", "none": "rh-hf none", "mask": f"rh-hf mask {len(self.mask)}", "record": "rh-hf record",
                "kv": f"rh-hf kv {self.kv_full_heads}", "naive": "naive eager"}[key]

    def naive_gb(self, length: int) -> float:
        return naive_attention_gb(self.n_layers, self.n_heads, self.docs[length]["n_tokens"], self.new_tokens)

    def _model(self, kind: str):
        if kind not in self._models:
            if kind == "stock":
                from lm_eval.models.huggingface import HFLM

                self._models[kind] = HFLM(pretrained=self.path, device="cpu", batch_size=1)
            elif kind == "ours":
                from rh_eval.models import load_hf

                self._models[kind] = load_hf(self.path, device="cpu")
            else:
                from transformers import AutoModelForCausalLM

                self._models[kind] = AutoModelForCausalLM.from_pretrained(self.path, attn_implementation="eager").eval()
        return self._models[kind]

    def weights_bytes(self) -> int:
        """One copy of the parameters (tied weights once): the part of a process's peak every contender shares."""
        return sum(p.numel() * p.element_size() for p in self._model("ours").model.parameters())

    def call(self, key: str, length: int) -> Callable[[], object]:
        """One generation of ``new_tokens`` greedy tokens on the ``length`` prompt, the way ``key`` does it."""
        from lm_eval.api.instance import Instance

        doc = self.docs[length]
        gen_kwargs = {"until": [], "max_gen_toks": self.new_tokens, "min_new_tokens": self.new_tokens, "do_sample": False}

        def through_lm_eval(lm) -> object:
            request = Instance("generate_until", doc, (doc["prompt"], dict(gen_kwargs)), 0, metadata=("bench", 0, 1))
            return lm.generate_until([request], disable_tqdm=True)

        if key == "hf":
            return lambda: through_lm_eval(self._model("stock"))
        if key == "naive":
            return lambda: self._naive(doc)
        ours = self._model("ours")

        def call() -> object:
            from rh_models.heads import HeadSet

            # mask and KV budget are swapped through the control directly: the self-checks would be timed too
            ours.control.set_mask(self.mask if key == "mask" else HeadSet((), ours.n_layers, ours.n_heads))
            ours.control.set_kv(self._streaming(ours) if key == "kv" else None)
            if key in MASS_CONTENDERS:
                mass = self._mass(ours, doc, key)
                with ours.control.observing(mass):
                    output = through_lm_eval(ours)
                mass.result()  # the prefill was read, once per layer (else this raises)
                return output
            if key != "record":
                return through_lm_eval(ours)
            with ours.settings(recorder=ours.new_recorder(self.scratch)):
                return through_lm_eval(ours)
        return call

    def _mass(self, ours, doc: dict, key: str):
        """The observer ``rh detect --score key`` arms, with the rows and targets it reads on ``doc``'s prompt."""
        from rh_models.mass_scores import question_test, repeat_rows
        from rh_models.observers import TargetMass

        ids = ours.tok_encode(doc["prompt"])
        if key == "attention":
            test = question_test(ours.tokenizer, ids, doc)
            rows, targets = test.rows, test.targets
        else:
            block = len(ids) // 2
            rows, targets = repeat_rows(len(ids) - 2 * block, block, key)
        return TargetMass(rows, targets, len(ids), ours.n_layers)

    def _streaming(self, ours):
        """The KV budget of the ``kv`` contender: ``kv_full_heads`` keep the full context, the rest sink 4 + window 64."""
        from rh_models.heads import select_heads
        from rh_models.kv_budget import DEFAULT_SINK, DEFAULT_WINDOW, StreamingHeads, sliding_windows
        from rh_models.shape import kv_heads_of

        heads = select_heads(self.kv_full_heads, ours.n_layers, ours.n_heads)
        return StreamingHeads(heads, DEFAULT_SINK, DEFAULT_WINDOW, kv_heads_of(ours.model.config),
                              sliding_windows(ours.control.modules, ours.model.config), spec=self.kv_full_heads)

    def _naive(self, doc: dict) -> list:
        import torch

        ids = self.tokenizer(doc["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = self._model("eager").generate(ids, max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens,
                                                do_sample=False, output_attentions=True, return_dict_in_generate=True,
                                                pad_token_id=self.tokenizer.pad_token_id)
        return [torch.stack([a[0, :, -1].argmax(-1) for a in step]) for step in out.attentions]

    def cleanup(self) -> None:
        for suffix in (".json", ".meta.json", ".events.jsonl"):
            self.scratch.with_suffix(suffix).unlink(missing_ok=True)


def memory_probe(model: str, lengths: list[int], new_tokens: int, mask_heads: str, key: str, length: int) -> int:
    """Peak RSS growth of one ``key`` call at ``length``, in a process that holds only that contender.

    glibc keeps freed heap pages and raises its mmap threshold as it goes, so in a shared process a later
    contender re-uses what an earlier one freed and its growth reads near zero; low fixed thresholds, set
    before anything is allocated, make growth faithful. One warm-up call on the shortest prompt first.
    """
    return_freed_memory_at_once()
    workload = Workload(model, lengths, new_tokens, mask_heads)
    try:
        workload.call(key, min(lengths))()
        return _timed(workload.call(key, length))[1]
    finally:
        workload.cleanup()


def _probe_in_subprocess(model: str, lengths: list[int], new_tokens: int, mask_heads: str, key: str,
                         length: int) -> int:
    import subprocess
    import sys

    args = json.dumps([model, lengths, new_tokens, mask_heads, key, length])
    code = ("import json, sys; from rh_eval.bench.overhead import memory_probe; "
            "print('RH_PROBE', memory_probe(*json.loads(sys.argv[1])))")
    done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RH_PROBE ")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RHError(f"memory probe {key} at {length} tokens failed: {last}")
    return int(lines[-1].split()[1])


def run_overhead(
    model: str,
    lengths: list[int],
    new_tokens: int,
    repeats: int,
    mask_heads: str,
    naive_limit_gb: float,
    contenders: tuple[str, ...] = CONTENDERS,
) -> tuple[dict, "Workload"]:
    """The first table (returned with its workload, whose loaded rh-hf model the detection table reuses).

    ``contenders``: a subset to time (stock ``hf``, every ratio's reference, is always one of them).
    """
    chosen = tuple(key for key in CONTENDERS if key == "hf" or key in contenders)
    workload = Workload(model, lengths, new_tokens, mask_heads)
    runnable = {key: [n for n in lengths if key != "naive" or workload.naive_gb(n) <= naive_limit_gb]
                for key in chosen}
    runs: dict[str, dict[int, list[float]]] = {key: {n: [] for n in lengths} for key in chosen}
    for key in chosen:  # warm-up on the shortest prompt: first calls pay one-time costs
        workload.call(key, min(lengths))()
    for repeat in range(repeats):
        for length in lengths:
            keys = chosen[repeat % len(chosen):] + chosen[: repeat % len(chosen)]
            for key in (k for k in keys if length in runnable[k]):
                start = time.perf_counter()
                workload.call(key, length)()
                runs[key][length].append(time.perf_counter() - start)
                print(f"repeat {repeat} length {length} {workload.label(key)}: {runs[key][length][-1]:.1f} s", flush=True)
    workload.cleanup()

    memory: dict[str, dict[int, int]] = {key: {} for key in chosen}
    for length in lengths:  # one fresh process per contender and length, after every timing
        for key in (k for k in chosen if length in runnable[k]):
            memory[key][length] = _probe_in_subprocess(model, lengths, new_tokens, mask_heads, key, length)
            print(f"memory length {length} {workload.label(key)}: {memory[key][length] / 1e6:.0f} MB", flush=True)

    weights = workload.weights_bytes()
    table = []
    for key in chosen:
        for length in lengths:
            samples, base = runs[key][length], runs["hf"][length]
            if not samples:
                table.append({"contender": workload.label(key), "length": length,
                              "note": f"not run: its attention maps alone need ~{workload.naive_gb(length):.0f} GB "
                                      f"(> {naive_limit_gb:g} GB)"})
                continue
            time_ratios = [ours / stock for ours, stock in zip(samples, base)]
            growth, base_growth = memory[key][length], memory["hf"][length]
            table.append({
                "contender": workload.label(key), "length": length,
                "seconds_median": statistics.median(samples),
                "time_ratio_median": statistics.median(time_ratios),
                "time_ratio_min": min(time_ratios), "time_ratio_max": max(time_ratios),
                "peak_growth_mb": growth / 1e6,
                # what a process running only this contender peaks at, relative to stock: weights + growth
                "memory_ratio": (weights + growth) / (weights + base_growth),
            })
    # the issue's own yardstick for the naive way: how much slower than *our* recording, per length
    naive_vs_record = {length: statistics.median(runs["naive"][length]) / statistics.median(runs["record"][length])
                       for length in lengths if runs.get("naive", {}).get(length) and runs.get("record", {}).get(length)}
    result = {"model": model, "new_tokens": new_tokens, "repeats": repeats, "mask_heads": workload.mask.spec(),
              "kv_full_heads": workload.kv_full_heads,
              "weights_mb": weights / 1e6, "overhead": table, "naive_vs_record": naive_vs_record}
    return result, workload


def render(result: dict) -> str:
    from pytablewriter import MarkdownTableWriter

    rows = []
    for row in result["overhead"]:
        if "note" in row:
            rows.append([row["contender"], row["length"], "—", "—", "—", row["note"]])
            continue
        rows.append([
            row["contender"], row["length"], f"{row['seconds_median']:.1f}",
            f"{row['time_ratio_median']:.2f}× ({row['time_ratio_min']:.2f}–{row['time_ratio_max']:.2f})",
            f"{row['peak_growth_mb']:.0f}", f"{row['memory_ratio']:.2f}×",
        ])
    writer = MarkdownTableWriter(
        headers=["contender", "prompt tokens", "median s", "time vs hf (min–max)", "peak MB above weights",
                 "peak memory vs hf (weights + growth)"],
        value_matrix=rows, margin=1,
    )
    text = writer.dumps() if rows else ""
    if result.get("naive_vs_record"):
        text += "\nnaive eager vs rh-hf record (median s): " + ", ".join(
            f"{ratio:.2f}x at {length}" for length, ratio in result["naive_vs_record"].items()) + "\n"
    if result.get("prefix_reuse"):
        text += render_reuse(result["prefix_reuse"])
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--lengths", type=comma_ints, default=[1000, 2000, 4000, 8000],
                        help="prompt lengths of the overhead table; empty to skip it")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mask-heads", default="8-0;11-3;14-2;15-7;16-1;19-5")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)} (hf, the reference, always runs)")
    parser.add_argument("--naive-limit-gb", type=float, default=12.0, help="skip naive eager above this map size")
    parser.add_argument("--detect-lengths", type=comma_ints, default=[1000, 2000], help="empty to skip the reuse table")
    parser.add_argument("--detect-depths", type=comma_ints, default=[0, 20, 40, 60, 80, 100])
    parser.add_argument("--detect-samples", type=int, default=3, help="needles per detection cell (paper: 3)")
    parser.add_argument("--detect-repeats", type=int, help="repeats of the detection table (default: --repeats // 2)")
    parser.add_argument("--detect-contenders", default="", help="';'-separated subset, e.g. 'no reuse;reuse' (default: all)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bench.json"),
                        help="results JSON (default benchmarks/results/bench.json)")


def pick_overhead_contenders(text: str) -> tuple[str, ...]:
    """``--contenders``: known keys only, refused in one line before anything loads."""
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    unknown = [key for key in keys if key not in CONTENDERS]
    if unknown or not keys:
        raise RHError(f"--contenders: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(CONTENDERS)}")
    return keys


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise RHError("--repeats must be at least 1")
    if not args.lengths and not args.detect_lengths:
        raise RHError("nothing to measure: --lengths and --detect-lengths are both empty")
    contenders = pick_contenders(args.detect_contenders)  # a typo fails before anything loads
    overhead_contenders = pick_overhead_contenders(args.contenders)
    result: dict = {"model": args.model, "overhead": []}
    workload = None
    if args.lengths:
        result, workload = run_overhead(args.model, args.lengths, args.new_tokens, args.repeats, args.mask_heads,
                                        args.naive_limit_gb, overhead_contenders)
    if args.detect_lengths:
        from rh_eval.models import load_hf

        lm = workload._model("ours") if workload else load_hf(args.model, device="cpu")
        repeats = args.detect_repeats or max(1, args.repeats // 2)
        result["prefix_reuse"] = time_prefix_reuse(lm, args.detect_lengths, args.detect_depths, args.detect_samples,
                                                   repeats, contenders)
    write_json_atomic(args.output, result)
    print(render(result))
    print(f"wrote {args.output}")
    return 0

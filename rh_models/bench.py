"""``rh bench`` / ``python benchmarks/overhead.py``: what masking and recording cost, as ratios to stock lm-eval.

Usage::

    rh bench --model smollm2-135m --lengths 1000,2000,4000 --new-tokens 32 --repeats 5 --output bench.json

Contenders, all on the same NIAH prompt per length, greedy, exactly ``--new-tokens`` tokens:

* ``hf``: stock lm-eval ``HFLM.generate_until`` (sdpa) — the reference every ratio divides by;
* ``rh-hf none``, ``rh-hf mask``: our model class without a mask and masking ``--mask-heads`` heads;
* ``rh-hf record``: recording top-1 positions and scoring (what ``record_scores=`` does);
* ``naive eager``: eager attention with ``output_attentions=True`` during ``generate`` and an arg-max over
  the returned maps — the obvious way, skipped where its attention maps would not fit in memory.

Why this shape: the contenders run alternately within each repeat (rotating who goes first), so drift of a
shared machine hits all of them alike; we report the median of per-repeat ratios with min–max, never a
timing assertion. Peak memory is the peak resident-set growth during the call, sampled every 5 ms.
A second table times ``rh detect`` on a small grid with and without haystack-prefix KV reuse.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

from rh_models.errors import RHError

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


def _timed(fn: Callable[[], object]) -> tuple[float, int]:
    with PeakMemory() as memory:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, memory.growth


def naive_attention_gb(n_layers: int, n_heads: int, length: int, new_tokens: int, bytes_per: int = 4) -> float:
    """Memory the naive way needs just to hold the prefill's attention maps (all layers, all heads)."""
    return n_layers * n_heads * length * (length + new_tokens) * bytes_per / 1e9


def run_overhead(
    model: str,
    lengths: list[int],
    new_tokens: int,
    repeats: int,
    mask_heads: str,
    naive_limit_gb: float,
    detect_lengths: list[int],
    detect_depths: list[int],
) -> dict:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    from rh_models.lm import RHHFLM
    from rh_models.recorder import ScoreRecorder
    from rh_models.zoo import resolve_pretrained
    from rh_tasks.niah import build_docs

    path = resolve_pretrained(model)
    stock = HFLM(pretrained=path, device="cpu", batch_size=1)
    ours = RHHFLM(pretrained=path, device="cpu", batch_size=1)
    eager = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    docs = build_docs(ours.tokenizer, lengths=lengths, depths=[50], samples=1, max_length=ours.max_length,
                      max_gen_toks=new_tokens)
    gen_kwargs = {"until": [], "max_gen_toks": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    mask = ours.set_mask(mask_heads)
    ours.set_mask("none")
    scratch = Path(f"/tmp/rh-bench-{time.time_ns()}.json")

    def lm_eval_call(lm, doc) -> Callable[[], object]:
        request = Instance("generate_until", doc, (doc["prompt"], dict(gen_kwargs)), 0, metadata=("bench", 0, 1))
        return lambda: lm.generate_until([request], disable_tqdm=True)

    def with_mask(spec, doc):
        def call():
            ours.control.set_mask(mask if spec else ours.control.heads.__class__((), ours.n_layers, ours.n_heads))
            return lm_eval_call(ours, doc)()
        return call

    def recording(doc):
        def call():
            ours.control.set_mask(type(mask)((), ours.n_layers, ours.n_heads))
            ours.recorder = ScoreRecorder(ours.tokenizer, ours.n_layers, ours.n_heads, scratch)
            ours.write_scores_after_generate = False
            try:
                return lm_eval_call(ours, doc)()
            finally:
                ours.recorder, ours.write_scores_after_generate = None, True
        return call

    def naive(doc):
        def call():
            ids = ours.tokenizer(doc["prompt"], return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = eager.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                     output_attentions=True, return_dict_in_generate=True,
                                     pad_token_id=ours.tokenizer.pad_token_id)
            return [torch.stack([a[0, :, -1].argmax(-1) for a in step]) for step in out.attentions]
        return call

    contenders = {
        "hf": lambda doc: lm_eval_call(stock, doc),
        "rh-hf none": lambda doc: with_mask(False, doc),
        f"rh-hf mask {len(mask)}": lambda doc: with_mask(True, doc),
        "rh-hf record": recording,
        "naive eager": naive,
    }
    runs: dict[str, dict[int, list[tuple[float, int]]]] = {name: {n: [] for n in lengths} for name in contenders}
    skipped: dict[int, str] = {}
    for name, make in contenders.items():  # warm-up on the shortest prompt: first calls pay one-time costs
        make(docs[0])()
    for repeat in range(repeats):
        for doc in docs:
            length = doc["length"]
            need = naive_attention_gb(ours.n_layers, ours.n_heads, doc["n_tokens"], new_tokens)
            names = list(contenders)
            names = names[repeat % len(names):] + names[: repeat % len(names)]
            for name in names:
                if name == "naive eager" and need > naive_limit_gb:
                    skipped[length] = f"not run: its attention maps alone need ~{need:.0f} GB (> {naive_limit_gb:g} GB)"
                    continue
                runs[name][length].append(_timed(contenders[name](doc)))
                print(f"repeat {repeat} length {length} {name}: {runs[name][length][-1][0]:.1f} s", flush=True)
    scratch.unlink(missing_ok=True)
    for suffix in (".meta.json", ".events.jsonl"):
        scratch.with_suffix(suffix).unlink(missing_ok=True)

    table = []
    for name in contenders:
        for length in lengths:
            samples = runs[name][length]
            base = runs["hf"][length]
            if not samples:
                table.append({"contender": name, "length": length, "note": skipped.get(length, "not run")})
                continue
            time_ratios = [s[0] / b[0] for s, b in zip(samples, base)]
            mem_ratios = [max(s[1], 1) / max(b[1], 1) for s, b in zip(samples, base)]
            table.append({
                "contender": name, "length": length,
                "seconds_median": statistics.median(s[0] for s in samples),
                "time_ratio_median": statistics.median(time_ratios),
                "time_ratio_min": min(time_ratios), "time_ratio_max": max(time_ratios),
                "peak_mb_median": statistics.median(s[1] for s in samples) / 1e6,
                "memory_ratio_median": statistics.median(mem_ratios),
            })
    result = {"model": model, "new_tokens": new_tokens, "repeats": repeats, "mask_heads": mask.spec(),
              "overhead": table}
    if detect_lengths:
        result["prefix_reuse"] = _time_prefix_reuse(ours, detect_lengths, detect_depths, max(1, repeats // 2))
    return result


def _time_prefix_reuse(lm, lengths: list[int], depths: list[int], repeats: int) -> dict:
    from rh_models.detect import detect

    seconds: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(repeats):
        for reuse in ((True, False) if repeat % 2 == 0 else (False, True)):
            out = Path(f"/tmp/rh-bench-detect-{time.time_ns()}.json")
            start = time.perf_counter()
            detect(lm, out, lengths=lengths, depths=depths, samples=1, prefix_reuse=reuse, progress=False)
            seconds[reuse].append(time.perf_counter() - start)
            for suffix in ("", ".meta.json", ".tests.jsonl", ".events.jsonl"):
                Path(str(out.with_suffix("")) + (suffix or ".json")).unlink(missing_ok=True)
    ratios = [off / on for on, off in zip(seconds[True], seconds[False])]
    return {"lengths": lengths, "depths": depths, "seconds_with_reuse": seconds[True],
            "seconds_without_reuse": seconds[False], "speedup_median": statistics.median(ratios)}


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
            f"{row['peak_mb_median']:.0f}", f"{row['memory_ratio_median']:.2f}×",
        ])
    writer = MarkdownTableWriter(
        headers=["contender", "prompt tokens", "median s", "time vs hf (min–max)", "peak MB", "memory vs hf"],
        value_matrix=rows, margin=1,
    )
    text = writer.dumps()
    reuse = result.get("prefix_reuse")
    if reuse:
        text += (f"\nrh detect, lengths {reuse['lengths']} x depths {reuse['depths']}: prefix KV reuse "
                 f"{reuse['speedup_median']:.2f}x faster (with {statistics.median(reuse['seconds_with_reuse']):.0f} s, "
                 f"without {statistics.median(reuse['seconds_without_reuse']):.0f} s)\n")
    return text


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=_ints, default=[1000, 2000, 4000])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mask-heads", default="8-0;11-3;14-2;15-7;16-1;19-5")
    parser.add_argument("--naive-limit-gb", type=float, default=12.0, help="skip naive eager above this map size")
    parser.add_argument("--detect-lengths", type=_ints, default=[1000, 2000], help="empty to skip the reuse table")
    parser.add_argument("--detect-depths", type=_ints, default=[0, 25, 50, 75, 100])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results.json"))


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise RHError("--repeats must be at least 1")
    result = run_overhead(args.model, args.lengths, args.new_tokens, args.repeats, args.mask_heads,
                          args.naive_limit_gb, args.detect_lengths, args.detect_depths)
    from rh_models.scores import write_json_atomic

    write_json_atomic(args.output, result)
    print(render(result))
    print(f"wrote {args.output}")
    return 0

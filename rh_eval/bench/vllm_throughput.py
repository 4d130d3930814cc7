"""``rh-vllm`` vs ``rh-hf`` throughput on the same CoT task with the same heads masked, in one run.

Usage (in the vLLM venv: ``make setup-vllm``)::

    .venv-vllm/bin/python benchmarks/vllm_throughput.py --limit 64 --batch-size 16 \\
        --model-args dtype=float32,gpu_memory_utilization=0.3 --output benchmarks/results/vllm_throughput.json

Why a ratio from one run: absolute seconds depend on the machine and its load; both backends run here back
to back on the same docs, so the ratio (and the share of identical generations) is what carries over.
:func:`main` must be called under an ``if __name__ == "__main__"`` guard (the script's): vLLM starts its engine
processes with ``spawn``, which imports the main module again.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

DEFAULT_HEADS = "17-3;18-6;20-6;5-0;12-4;14-2;16-1;22-7"  # any 8 heads: both backends mask the same ones


def evaluate(lm, task: str, limit: int) -> tuple[float, list[str]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], limit=limit, log_samples=True,
                          task_manager=TaskManager(include_defaults=False))
    seconds = time.perf_counter() - start
    by_doc = {s["doc_id"]: s["resps"][0][0] for s in out["samples"][task]}  # lm-eval logs a sample per filter
    return seconds, [by_doc[doc] for doc in sorted(by_doc)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/vllm_throughput.py", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="rh_factsum_cot")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="rh-hf's batch size (vLLM schedules its own)")
    parser.add_argument("--mask-heads", default=DEFAULT_HEADS)
    parser.add_argument("--model-args", default="dtype=float32,gpu_memory_utilization=0.3",
                        help="extra args for rh-vllm (k=v,...)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from lm_eval.utils import simple_parse_args_string

    from rh_eval.models import load_hf
    from rh_models.vllm_lm import RHVLLM

    hf = load_hf(args.model, args.batch_size, mask_heads=args.mask_heads)
    tokenizer = hf.tokenizer
    hf_seconds, hf_text = evaluate(hf, args.task, args.limit)
    del hf
    load_start = time.perf_counter()
    vllm = RHVLLM(pretrained=args.model, mask_heads=args.mask_heads, **simple_parse_args_string(args.model_args))
    load_seconds = time.perf_counter() - load_start
    vllm_seconds, vllm_text = evaluate(vllm, args.task, args.limit)

    tokens = lambda texts: sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)  # noqa: E731
    result = {
        "model": args.model, "task": args.task, "docs": len(hf_text), "mask_heads": args.mask_heads,
        "rh_hf": {"seconds": round(hf_seconds, 1), "generated_tokens": tokens(hf_text), "batch_size": args.batch_size},
        "rh_vllm": {"seconds": round(vllm_seconds, 1), "generated_tokens": tokens(vllm_text),
                    "engine_load_seconds": round(load_seconds, 1), "model_args": args.model_args},
        "throughput_ratio_vllm_over_hf": round(hf_seconds / vllm_seconds, 2),
        "identical_generations": round(sum(a == b for a, b in zip(hf_text, vllm_text)) / len(hf_text), 3),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0

"""The second table of ``rh bench``: ``rh detect`` with and without haystack-prefix KV reuse.

Contenders run alternately on the same grid (rotating who goes first each repeat):

* ``no reuse``: every prompt prefilled from scratch, one test at a time (``rh detect`` before reuse);
* ``reuse, masked sdpa``: the cache of the shared prefix reused, the continuation attended with the
  explicit ``N x (P+N)`` mask transformers builds (what reuse did before :mod:`rh_models.cascade`);
* ``reuse``: the same with the prefix cascade;
* ``no reuse, cell batches`` / ``reuse, cell batches``: a cell's needles generated as one batch (the
  default of ``rh detect``), without and with reuse — the pair that isolates what reuse adds there.

Why the prefill/decode split: reuse can only shorten the prefill (the hay before the needle, at most about
half of a prompt on a grid of depths 0..100); the answer's decoding is the same work either way. Forward
calls are timed through hooks on the model: a call with more than one new token is prefill, one token is a
decoding step. The per-head scores of every contender must be identical; the result says whether they are.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

# name -> (prefix reuse, cascade, a cell's needles as one batch)
REUSE_CONTENDERS = {
    "no reuse": (False, False, False),
    "reuse, masked sdpa": (True, False, False),
    "reuse": (True, True, False),
    "no reuse, cell batches": (False, False, True),
    "reuse, cell batches": (True, True, True),
}


class ForwardTimer:
    """Seconds of prefill calls and decoding steps of one decoder, via forward hooks; positions prefilled
    (batch x new tokens, padding included) and decoding steps (a batched step counts once)."""

    def __init__(self, model) -> None:
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self.tokens = {"prefill": 0, "decode": 0}
        self._started = 0.0
        self._new_tokens = self._positions = 0
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _before(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._new_tokens = int(ids.shape[1]) if ids is not None else 0
        self._positions = int(ids.numel()) if ids is not None else 0
        self._started = time.perf_counter()

    def _after(self, module, args, kwargs, output) -> None:
        kind = "prefill" if self._new_tokens > 1 else "decode"
        self.seconds[kind] += time.perf_counter() - self._started
        self.tokens[kind] += self._positions if kind == "prefill" else 1

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def pick_contenders(spec: str) -> list[str]:
    """``'no reuse;reuse'`` -> names, all by default; "no reuse" always runs (every ratio divides by it)."""
    from rh_models.errors import RHError

    picked = [name.strip() for name in spec.split(";") if name.strip()]
    for name in picked:
        if name not in REUSE_CONTENDERS:
            raise RHError(f"unknown detection contender {name!r}; choose from {'; '.join(REUSE_CONTENDERS)}")
    return [name for name in REUSE_CONTENDERS if not picked or name in picked or name == "no reuse"]


def time_prefix_reuse(lm, lengths: list[int], depths: list[int], samples: int, repeats: int,
                      contenders: list[str] | None = None) -> dict:
    """Run the detection grid ``repeats`` times per contender; medians and per-repeat speedups vs no reuse."""
    from rh_eval.detect import detect

    names = contenders or list(REUSE_CONTENDERS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    scores: dict[str, str] = {}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for contender in names[shift:] + names[:shift]:
            reuse, with_cascade, batch_cells = REUSE_CONTENDERS[contender]
            lm.prefix_tokens_reused = 0
            lm.prefix.clear()  # no head start from the previous contender's cache
            timer = ForwardTimer(lm.model.base_model)  # the decoder: generate steps and prefix prefills alike
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "scores.json"
                start = time.perf_counter()
                with lm.settings(cascade=with_cascade):
                    detect(lm, out, lengths=lengths, depths=depths, samples=samples, progress=False,
                           prefix_reuse=reuse, batch_by="cell" if batch_cells else "none")
                seconds = time.perf_counter() - start
                scores.setdefault(contender, out.read_text())
            timer.remove()
            runs[contender].append({"seconds": seconds, "prefill_seconds": timer.seconds["prefill"],
                                    "decode_seconds": timer.seconds["decode"],
                                    "prompt_tokens_prefilled": timer.tokens["prefill"],
                                    "decode_steps": timer.tokens["decode"],
                                    "prompt_tokens_reused": lm.prefix_tokens_reused})
            print(f"detect repeat {repeat} {contender}: {seconds:.1f} s (prefill {timer.seconds['prefill']:.1f} s, "
                  f"decode {timer.seconds['decode']:.1f} s)", flush=True)

    baseline = runs["no reuse"]
    table = []
    for contender, samples_ in runs.items():
        speedups = [base["seconds"] / run["seconds"] for base, run in zip(baseline, samples_)]
        prefill_speedups = [base["prefill_seconds"] / run["prefill_seconds"] for base, run in zip(baseline, samples_)]
        table.append({
            "contender": contender,
            **{key: statistics.median(run[key] for run in samples_) for key in samples_[0]},
            "speedup_median": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
            "prefill_speedup_median": statistics.median(prefill_speedups),
        })
    same = len({json.dumps(json.loads(text), sort_keys=True) for text in scores.values()}) == 1

    def gain(without: str, with_: str) -> float | None:  # what reuse alone adds, all else equal
        if without not in runs or with_ not in runs:
            return None
        return statistics.median(a["seconds"] / b["seconds"] for a, b in zip(runs[without], runs[with_]))

    return {"lengths": lengths, "depths": depths, "samples": samples, "repeats": repeats, "table": table,
            "identical_scores": same, "reuse_speedup_one_at_a_time": gain("no reuse", "reuse"),
            "reuse_speedup_in_cell_batches": gain("no reuse, cell batches", "reuse, cell batches")}


def render_reuse(reuse: dict) -> str:
    from pytablewriter import MarkdownTableWriter

    rows = [[row["contender"], f"{row['seconds']:.1f}",
             f"{row['speedup_median']:.2f}× ({row['speedup_min']:.2f}–{row['speedup_max']:.2f})",
             f"{row['prefill_seconds']:.1f}", f"{row['prefill_speedup_median']:.2f}×", f"{row['decode_seconds']:.1f}",
             f"{row['prompt_tokens_prefilled']:.0f}", f"{row['prompt_tokens_reused']:.0f}"]
            for row in reuse["table"]]
    writer = MarkdownTableWriter(
        headers=["rh detect", "median s", "speedup vs no reuse (min–max)", "prefill s", "prefill speedup",
                 "decode s", "positions prefilled", "prompt tokens from the cache"],
        value_matrix=rows, margin=1,
    )
    return (f"\nrh detect, lengths {reuse['lengths']} x depths {reuse['depths']} x {reuse['samples']} needles, "
            f"{reuse['repeats']} repeat(s); identical scores: {'yes' if reuse['identical_scores'] else 'NO'}\n\n"
            + writer.dumps() + "".join(
                f"\nprefix reuse alone, {how}: {reuse[key]:.2f}x\n"
                for key, how in (("reuse_speedup_one_at_a_time", "one test at a time"),
                                 ("reuse_speedup_in_cell_batches", "a cell's needles batched"))
                if reuse.get(key) is not None))

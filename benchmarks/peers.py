"""The peers side by side: the same heads zeroed through ``rh-hf``, nnsight and TransformerLens, and top-1
attended positions recorded by ``rh-hf`` and by eager attention's ``output_attentions``.

Usage (in the peers' own venv, ``make setup-peers``; nnsight and TransformerLens are not dependencies of rh-eval)::

    .venv-peers/bin/python benchmarks/peers.py --output benchmarks/results/peers-smollm2-135m_cpu-2core.json

Masking: every contender generates greedily from the same NIAH prompts (the model's own tokens, chat template)
with the same query heads zeroed at every step, prefill and decoding:

* ``rh-hf``: ``RHHFLM(mask_heads=..., mask_method=zero)`` through lm-eval's ``generate_until``, as a user runs it;
* ``nnsight``: the model's ``generate`` traced by nnsight, the heads' slice of each layer's ``o_proj`` input set
  to zero at every step (``tracer.all()``), the way nnsight users ablate a head;
* ``transformer-lens``: ``TransformerBridge`` with a hook on ``blocks.L.attn.hook_z`` (the same slice) during
  its ``generate``. Skipped, with the reason recorded, when its unmasked generation is not transformers' own
  (TransformerLens 4.3 does not read the KV cache that transformers >= 5.24 passes as ``cache``).

Recording: ``rh-hf`` with ``record_scores=`` (top-1 positions of the row that produces each token, scored into a
score file) against what a peer has to do for the same positions: eager attention with ``output_attentions=True``
during ``generate`` and an arg-max over the last query row of every map. The positions of both are compared.

Why this shape: contenders of one group run alternately on every prompt of every repeat, the order rotated each
repeat, so drift of a shared machine hits them alike; a time ratio is the median of per-repeat ratios (sum over
the prompts) with min–max. Peak memory is read after the timings, in a fresh process per contender that loads only
that contender, with glibc told to return freed memory at once: the process's peak RSS during one pass over the
prompts (weights, libraries and activations) and its growth above the RSS before the pass.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

DEFAULT_HEADS = "18-6;17-3;20-6;18-7;17-4;23-2;23-7;22-7"  # the demo's retrieval@8 (README), fixed here
MASKING = ("rh-hf", "nnsight", "transformer-lens")
RECORDING = ("rh-hf record_scores", "eager output_attentions")


# --- pure helpers (tested in tests/test_peers.py without the peers installed) -----------------------------------

def continuation_text(tokenizer, new_ids: list[int], eos_id: int) -> str:
    """What lm-eval's ``generate_until`` returns for these generated ids: cut at the first EOS, specials dropped."""
    if eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id)]
    return tokenizer.decode(new_ids, skip_special_tokens=True)


def head_columns(by_layer: dict[int, list[int]], head_dim: int) -> dict[int, list[int]]:
    """The columns of each layer's output-projection input that the heads own: ``head*d .. (head+1)*d``."""
    return {layer: [c for head in heads for c in range(head * head_dim, (head + 1) * head_dim)]
            for layer, heads in sorted(by_layer.items())}


def top1_agreement(ours, theirs, ours_ids: list[int], theirs_ids: list[int]) -> tuple[int, int]:
    """(agreeing, compared) top-1 positions, ``(steps, layers, heads)`` each, over the steps both ran on the same
    tokens: every step up to and including the first one whose generated token differs."""
    steps = min(len(ours), len(theirs), len(ours_ids), len(theirs_ids))
    same = next((i for i in range(steps) if ours_ids[i] != theirs_ids[i]), steps - 1) + 1
    a, b = ours[:same], theirs[:same]
    return int((a == b).sum()), int(a.numel())


def ratio_summary(seconds: list[float], base: list[float]) -> dict[str, float]:
    """Median and min–max of per-repeat time ratios ``seconds / base``."""
    ratios = [s / b for s, b in zip(seconds, base)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}



# --- the workload and its contenders ---------------------------------------------------------------------------

class Workload:
    """The model folder, its head shape, the heads and the prompts; each contender is loaded on first use."""

    def __init__(self, model: str, heads: str, lengths: list[int], depths: list[int], new_tokens: int) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from rh_models.heads import select_heads
        from rh_models.shape import context_length, head_shape
        from rh_models.zoo import resolve_pretrained
        from rh_tasks.niah_docs import build_docs

        self.path = str(resolve_pretrained(model))
        config = AutoConfig.from_pretrained(self.path)
        self.n_layers, self.n_heads = head_shape(config)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.heads = select_heads(heads, self.n_layers, self.n_heads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.eos = self.tokenizer.eos_token_id
        self.new_tokens = new_tokens
        self.docs = build_docs(self.tokenizer, lengths=lengths, depths=depths, samples=1, chat_template=True,
                               max_length=context_length(config, self.tokenizer), max_gen_toks=new_tokens)
        for doc in self.docs:
            doc["ids"] = self.tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"]
        self.scratch = Path(tempfile.mkdtemp(prefix="rh-peers-"))
        self._loaded: dict[str, object] = {}

    def contender(self, name: str):
        if name not in self._loaded:
            self._loaded[name] = CONTENDERS[name](self)
        return self._loaded[name]

    def text(self, new_ids: list[int]) -> str:
        return continuation_text(self.tokenizer, new_ids, self.eos)


class RHHF:
    """``rh-hf`` as a user runs it: lm-eval's ``generate_until``, with the model args of the subclass."""

    def __init__(self, work: Workload, **model_args) -> None:
        from rh_models.lm import RHHFLM

        self.work = work
        self.lm = RHHFLM(pretrained=work.path, device="cpu", batch_size=1, **model_args)
        doc = work.docs[0]
        if self.lm.tok_encode(doc["prompt"]) != doc["ids"]:
            raise SystemExit("lm-eval tokenizes the prompts differently from the peers; the comparison is void")

    def __call__(self, doc: dict) -> dict:
        from lm_eval.api.instance import Instance

        args = {"until": [], "max_gen_toks": self.work.new_tokens, "do_sample": False}
        request = Instance("generate_until", doc, (doc["prompt"], args), 0, metadata=("peers", 0, 1))
        return {"text": self.lm.generate_until([request], disable_tqdm=True)[0]}


class RHHFMask(RHHF):
    def __init__(self, work: Workload) -> None:
        super().__init__(work, mask_heads=work.heads.spec(), mask_method="zero")


class RHHFRecord(RHHF):
    """``record_scores=``: top-1 positions recorded, copy events scored, the score file written after every call."""

    def __init__(self, work: Workload) -> None:
        super().__init__(work, record_scores=str(work.scratch / "scores.json"), record_overwrite=True)

    def positions(self, doc: dict):
        """The recorded top-1 positions ``(steps, layers, heads)`` and generated ids of one greedy generation."""
        import torch

        control = self.lm.control
        ids = torch.tensor([doc["ids"]])
        control.start_recording()
        try:
            with torch.no_grad():
                out = self.lm.model.generate(ids, max_new_tokens=self.work.new_tokens, do_sample=False,
                                             eos_token_id=self.work.eos, pad_token_id=self.work.eos)
        finally:
            rows = control.stop_recording()
        return rows.absolute(ids.shape[1])[:, 0], out[0, ids.shape[1]:].tolist()


class NNsight:
    """nnsight's way: trace ``generate`` and zero the heads' slice of every ``o_proj`` input at every step."""

    def __init__(self, work: Workload) -> None:
        import torch
        from nnsight.modeling.transformers import TransformersModel

        self.work = work
        self.model = TransformersModel(work.path, task="text-generation", device_map="cpu", dispatch=True)
        self.columns = {layer: torch.tensor(cols) for layer, cols in
                        head_columns(work.heads.by_layer(), work.head_dim).items()}
        # an open tracer.all() loop ends at the last step by design; nnsight warns about that every call
        warnings.filterwarnings("ignore", message=".*was never reached.*")

    def __call__(self, doc: dict) -> dict:
        import torch

        model, columns = self.model, self.columns
        ids = torch.tensor([doc["ids"]])
        with model.generate(max_new_tokens=self.work.new_tokens, do_sample=False, eos_token_id=self.work.eos,
                            pad_token_id=self.work.eos) as tracer:
            with tracer.invoke(ids):
                for _ in tracer.all():  # every forward: the prefill, then each decoding step
                    for layer, cols in columns.items():  # in layer order, as the model reaches them
                        model.model.layers[layer].self_attn.o_proj.input[..., cols] = 0
            with tracer.invoke():
                out = tracer.result.save()
        return {"text": self.work.text(out[0, ids.shape[1]:].tolist())}


class TransformerLens:
    """TransformerLens' way: ``TransformerBridge`` with a ``hook_z`` hook zeroing the heads during ``generate``."""

    def __init__(self, work: Workload) -> None:
        from transformer_lens.model_bridge import TransformerBridge

        self.work = work
        self.bridge = TransformerBridge.boot_transformers(work.path, device="cpu")

        def zero(heads):
            def hook(z, hook):  # z: (batch, positions, heads, head_dim)
                z[:, :, heads, :] = 0
                return z
            return hook

        self.hooks = [(f"blocks.{layer}.attn.hook_z", zero(heads)) for layer, heads in work.heads.by_layer().items()]

    def generate(self, doc: dict, masked: bool = True) -> list[int]:
        import torch

        ids = torch.tensor([doc["ids"]])
        with self.bridge.hooks(fwd_hooks=self.hooks if masked else []):
            out = self.bridge.generate(ids, max_new_tokens=self.work.new_tokens, do_sample=False, stop_at_eos=True,
                                       eos_token_id=self.work.eos, verbose=False, return_type="tokens")
        return out[0, ids.shape[1]:].tolist()

    def __call__(self, doc: dict) -> dict:
        return {"text": self.work.text(self.generate(doc))}


class EagerRecord:
    """What a peer has for top-1 positions: eager attention maps from ``output_attentions=True``, arg-maxed."""

    def __init__(self, work: Workload) -> None:
        from transformers import AutoModelForCausalLM

        self.work = work
        self.model = AutoModelForCausalLM.from_pretrained(work.path, attn_implementation="eager").eval()

    def generate(self, doc: dict, attentions: bool = True):
        import torch

        ids = torch.tensor([doc["ids"]])
        with torch.no_grad():
            out = self.model.generate(ids, max_new_tokens=self.work.new_tokens, do_sample=False,
                                      eos_token_id=self.work.eos, pad_token_id=self.work.eos,
                                      output_attentions=attentions, return_dict_in_generate=True)
        new = out.sequences[0, ids.shape[1]:].tolist()
        if not attentions:
            return None, new
        # per step, per layer: the arg-max of the last query row of each head's map
        positions = torch.stack([torch.stack([a[0, :, -1].argmax(-1) for a in step]) for step in out.attentions])
        return positions, new

    def __call__(self, doc: dict) -> dict:
        positions, new = self.generate(doc)
        return {"text": self.work.text(new), "positions": positions, "ids": new}


CONTENDERS = {"rh-hf": RHHFMask, "nnsight": NNsight, "transformer-lens": TransformerLens,
              "rh-hf record_scores": RHHFRecord, "eager output_attentions": EagerRecord}


# --- the run ---------------------------------------------------------------------------------------------------

def transformer_lens_refusal(work: Workload) -> str | None:
    """Why TransformerLens cannot be compared here, or None: its unmasked greedy generation must be transformers'
    own (eager, as TransformerLens forces) on the shortest prompt."""
    import transformers

    doc = min(work.docs, key=lambda d: d["n_tokens"])
    try:
        tl = work.contender("transformer-lens").generate(doc, masked=False)
    except Exception as exc:  # noqa: BLE001 -- recorded as the reason, never hidden
        return f"TransformerLens failed to load or generate offline: {type(exc).__name__}: {exc}"
    _, hf = work.contender("eager output_attentions").generate(doc, attentions=False)
    if tl == hf:
        return None
    why = (f"its unmasked greedy generation differs from transformers' own (eager) on the {doc['n_tokens']}-token "
           f"prompt: {work.text(tl)!r} vs {work.text(hf)!r} (transformers {transformers.__version__})")
    if "cache" in inspect.signature(work.contender("eager output_attentions").model.forward).parameters:
        why += ("; transformers >= 5.24 passes the KV cache to attention as `cache`, and TransformerLens 4.3's "
                "attention bridge reads only `past_key_values` / `layer_past`, so each decoding step attends to "
                "itself alone")
    return why


def time_group(work: Workload, names: list[str], repeats: int) -> tuple[dict, dict]:
    """Seconds per repeat (summed over the prompts) and each contender's outputs, contenders alternating."""
    seconds = {name: [0.0] * repeats for name in names}
    outputs: dict[str, list[dict]] = {name: [] for name in names}
    warm = min(work.docs, key=lambda d: d["n_tokens"])
    for name in names:  # first calls pay one-time costs (tracing set-up, kernels)
        work.contender(name)(warm)
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        for i, doc in enumerate(work.docs):
            for name in order:
                start = time.perf_counter()
                out = work.contender(name)(doc)
                seconds[name][repeat] += time.perf_counter() - start
                if repeat == 0:
                    outputs[name].append(out)
                elif out["text"] != outputs[name][i]["text"]:
                    raise SystemExit(f"{name} is not deterministic on prompt {i}: greedy generations differ between repeats")
            print(f"repeat {repeat}: " + ", ".join(f"{n} {seconds[n][repeat]:.1f} s" for n in names), flush=True)
    return seconds, outputs


def memory_probe(args: argparse.Namespace) -> dict:
    """One contender alone in this process: peak RSS over one pass on every prompt, after a warm-up call."""
    from rh_eval.bench.overhead import PeakMemory, return_freed_memory_at_once

    return_freed_memory_at_once()
    work = Workload(args.model, args.heads, args.lengths, args.depths, args.new_tokens)
    try:
        contender = work.contender(args.probe)
        contender(min(work.docs, key=lambda d: d["n_tokens"]))
        with PeakMemory() as rss:
            for doc in work.docs:
                contender(doc)
    finally:
        shutil.rmtree(work.scratch, ignore_errors=True)
    return {"peak_rss_mb": rss.peak / 1e6, "growth_mb": (rss.peak - rss.base) / 1e6}


def probe_in_subprocess(args: argparse.Namespace, name: str) -> dict:
    argv = [sys.executable, __file__, "--probe", name, "--model", args.model, "--heads", args.heads,
            "--lengths", ",".join(map(str, args.lengths)), "--depths", ",".join(map(str, args.depths)),
            "--new-tokens", str(args.new_tokens), *(["--threads", str(args.threads)] if args.threads else [])]
    done = subprocess.run(argv, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PEERS_PROBE ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"memory probe of {name} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def describe_machine() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    versions = {}
    for package in ("torch", "transformers", "lm_eval", "nnsight", "transformer-lens", "rh-eval"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    import rh_models
    import torch

    from rh_eval.provenance import cpu_model

    source = Path(rh_models.__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "rh_models", "rh_tasks"],
                           capture_output=True, text=True)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": round(memory / 2**30, 1), "gpu": "none", "os": platform.platform(), "versions": versions,
            "rh_eval_source": {"commit": commit.stdout.strip() or None,
                               "uncommitted_changes_in_rh_models_rh_tasks": bool(dirty.stdout.strip())}}


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()
    work = Workload(args.model, args.heads, args.lengths, args.depths, args.new_tokens)
    skipped = {}
    masking = list(MASKING)
    refusal = transformer_lens_refusal(work)
    if refusal:
        skipped["transformer-lens"] = refusal
        masking.remove("transformer-lens")
        work._loaded.pop("transformer-lens", None)
        print(f"transformer-lens skipped: {refusal}", flush=True)
    mask_seconds, mask_out = time_group(work, masking, args.repeats)
    record_seconds, record_out = time_group(work, list(RECORDING), args.repeats)

    agree = compared = same_generation = 0
    recorder = work.contender("rh-hf record_scores")
    for doc, eager in zip(work.docs, record_out["eager output_attentions"]):
        ours, ours_ids = recorder.positions(doc)
        a, n = top1_agreement(ours, eager["positions"], ours_ids, eager["ids"])
        agree, compared, same_generation = agree + a, compared + n, same_generation + (ours_ids == eager["ids"])

    memory = {}
    if not args.no_memory:
        for name in masking + list(RECORDING):
            memory[name] = probe_in_subprocess(args, name)
            print(f"memory {name}: peak {memory[name]['peak_rss_mb']:.0f} MB", flush=True)

    def rows(names, seconds, outputs, base):
        table = {}
        for name in names:
            texts = [o["text"] for o in outputs[name]]
            row = {"identical_to_" + base: sum(t == b["text"] for t, b in zip(texts, outputs[base])),
                   "prompts": len(texts), "seconds_per_pass": seconds[name],
                   "time_ratio": ratio_summary(seconds[name], seconds[base]), "texts": texts}
            if name in memory:
                row.update(memory[name], memory_ratio=memory[name]["peak_rss_mb"] / memory[base]["peak_rss_mb"])
            table[name] = row
        return table

    unmasked = [o["text"] for o in record_out["rh-hf record_scores"]]
    shutil.rmtree(work.scratch, ignore_errors=True)
    machine = describe_machine()
    machine["load_average_1min"] = {"start": round(load_before[0], 1), "end": round(os.getloadavg()[0], 1)}
    return {
        "what": "the same heads zeroed through rh-hf, nnsight and TransformerLens; top-1 positions recorded by "
                "rh-hf (record_scores) and by eager output_attentions",
        "command": "benchmarks/peers.py " + " ".join(sys.argv[1:]),
        "machine": machine,
        "model": args.model, "heads": work.heads.spec(), "new_tokens": args.new_tokens, "repeats": args.repeats,
        "prompts": [{"length": d["length"], "depth": d["depth"], "n_tokens": d["n_tokens"], "needle_id": d["needle_id"]}
                    for d in work.docs],
        "masking": {
            "contenders": rows(masking, mask_seconds, mask_out, "rh-hf"), "skipped": skipped,
            "mask_changes_generation": sum(m["text"] != u for m, u in zip(mask_out["rh-hf"], unmasked)),
        },
        "recording": {
            "contenders": rows(list(RECORDING), record_seconds, record_out, "rh-hf record_scores"),
            "top1_agreement": {"agreeing": agree, "compared": compared, "prompts": len(work.docs),
                               "prompts_with_identical_generation": same_generation},
        },
    }


def render(result: dict) -> str:
    lines = ["| contender | identical generations | s per pass (median) | time (min–max) | peak RSS MB | peak RSS |",
             "| --- | ---: | ---: | --- | ---: | ---: |"]
    for group, base in (("masking", "rh-hf"), ("recording", "rh-hf record_scores")):
        for name, row in result[group]["contenders"].items():
            ratio = row["time_ratio"]
            memory = (f"{row['peak_rss_mb']:.0f} | {row['memory_ratio']:.2f}×" if "peak_rss_mb" in row else "— | —")
            lines.append(f"| {name} | {row['identical_to_' + base]}/{row['prompts']} | "
                         f"{statistics.median(row['seconds_per_pass']):.1f} | {ratio['median']:.2f}× "
                         f"({ratio['min']:.2f}–{ratio['max']:.2f}) | {memory} |")
        for name, why in result[group].get("skipped", {}).items():
            lines.append(f"| {name} | — | — | skipped: {why} | — | — |")
    top1 = result["recording"]["top1_agreement"]
    lines.append(f"\ntop-1 positions, rh-hf vs eager: {top1['agreeing']} of {top1['compared']} agree "
                 f"({top1['prompts_with_identical_generation']}/{top1['prompts']} prompts generated identically); "
                 f"the mask changes rh-hf's generation on {result['masking']['mask_changes_generation']}/"
                 f"{len(result['prompts'])} prompts")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from rh_models.arguments import comma_ints

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--heads", default=DEFAULT_HEADS, help="query heads to zero, L-H;L-H;...")
    parser.add_argument("--lengths", type=comma_ints, default=[500, 1000, 2000], help="prompt lengths in tokens")
    parser.add_argument("--depths", type=comma_ints, default=[25, 75], help="needle depths in %% of the hay")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own); 1 on a shared machine")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory probes")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--probe", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.probe:
        print("PEERS_PROBE " + json.dumps(memory_probe(args)), flush=True)
        return 0
    result = run(args)
    text = render(result)
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1, default=float) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

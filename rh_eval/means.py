"""``rh means``: every head's mean output over a reference set, the file ``mask_method=mean`` reads.

Usage::

    rh means --model smollm2-135m --output means.json                      # NIAH prompts without a needle
    rh means --model smollm2-135m --output means.json --lengths 1000,2000
    rh means --model smollm2-135m --output means.json --text-file corpus.txt   # each file one sequence
    rh means --model smollm2-135m --output means.json --tasks rh_factsum_cot --limit 20   # lm-eval tasks' prompts
    lm_eval --model rh-hf --model_args pretrained=smollm2-135m,head_scores=s.json,mask_heads=top:8,\\
        mask_method=mean,head_means=means.json --tasks rh_niah

What is averaged: for every (layer, query head), the head's attention output -- its slice of the output
projection's input, the very tensor a mask replaces -- over every position of every reference sequence, on the
unmasked model (float64 sums). Sequences run one at a time, unpadded, so no padding position enters a mean.

Why the NIAH haystack by default: a mean should come from inputs like those the head is ablated on (the
instruction, the essays, the question) but must not contain the needle, or a masked retrieval head would be
handed part of the answer. ``--tasks`` takes the prompts of any lm-eval task instead (e.g. a CoT benchmark's
few-shot prompts); ``--text-file`` any text. The file records where its means came from (model, config hash,
reference set, tokens) and is written atomically; an existing file is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from rh_eval.cli_args import parse_list, parse_metadata, parse_model_args
from rh_models.arguments import comma_ints
from rh_models.errors import RHError
from rh_models.files import require_file
from rh_models.zoo import DEFAULT_MODEL

DEFAULT_LENGTHS = (500, 1000, 2000)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias (see `rh models`) or a local HF folder")
    parser.add_argument("--output", required=True, help="the head-means file to write (JSON)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--lengths", type=comma_ints, default=None,
                        help="NIAH prompt lengths in tokens, one needle-free prompt each (default "
                             f"{','.join(map(str, DEFAULT_LENGTHS))}, those that fit the model)")
    source.add_argument("--text-file", action="append", default=None,
                        help="a UTF-8 text file, one reference sequence (repeatable)")
    source.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks whose prompts are the reference")
    parser.add_argument("--limit", type=int, default=None, help="with --tasks: documents per task")
    parser.add_argument("--metadata", default=None, help="with --tasks: JSON object passed to the tasks")
    parser.add_argument("--include-path", action="append", default=[], help="with --tasks: extra task folder")
    parser.add_argument("--apply-chat-template", action="store_true",
                        help="render the NIAH / task prompts with the model's chat template")
    parser.add_argument("--model-args", default=None, help="extra rh-hf model args, e.g. dtype=float32")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")


def check_request(args: argparse.Namespace) -> None:
    """Everything about the reference set that can be refused before a model loads (minutes for a large one)."""
    if args.tasks is None and (args.limit is not None or args.metadata or args.include_path):
        raise RHError("--limit, --metadata and --include-path are for --tasks")
    if args.tasks is not None:
        parse_list(args.tasks, "--tasks")  # empty or repeated: one line
    if args.limit is not None and args.limit < 1:
        raise RHError(f"--limit must be at least 1, got {args.limit}")
    if args.text_file and args.apply_chat_template:
        raise RHError("--apply-chat-template renders the NIAH or task prompts; a --text-file is read as it is")
    for name in args.text_file or []:
        require_file(name, "--text-file")


def reference_texts(lm: Any, args: argparse.Namespace, manager: Any = None) -> tuple[list[str], dict[str, Any]]:
    """The reference sequences, and how they were chosen (for the file's provenance)."""
    chat = bool(args.apply_chat_template)
    if args.text_file:
        texts, files = [], []
        for name in args.text_file:
            data = Path(name).read_bytes()
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise RHError(f"--text-file {name} is not UTF-8 text") from None
            if not texts[-1].strip():
                raise RHError(f"--text-file {name} is empty")
            files.append({"path": str(name), "sha256": hashlib.sha256(data).hexdigest()})
        return texts, {"kind": "text_files", "files": files}
    if args.tasks is not None:
        return task_prompts(lm, args, manager), {"kind": "tasks", "tasks": parse_list(args.tasks, "--tasks"),
                                                 "limit": args.limit, "metadata": args.metadata, "chat_template": chat}
    from rh_tasks.niah_docs import unneedled_prompts

    lengths = list(args.lengths or [n for n in DEFAULT_LENGTHS if n + 64 <= lm.max_length] or [lm.max_length // 2])
    texts = unneedled_prompts(lm.tokenizer, lengths, chat_template=chat, max_length=lm.max_length)
    return texts, {"kind": "niah_haystack", "haystack": "pg_essays", "needles": "paper", "lengths": lengths,
                   "chat_template": chat}


def tasks_manager(args: argparse.Namespace) -> Any:
    """lm-eval's TaskManager for ``--tasks`` (unknown tasks refused in one line), as ``rh compare`` builds it."""
    from rh_eval.compare import task_manager

    return task_manager(parse_list(args.tasks, "--tasks"), args.model, parse_metadata(args.metadata),
                        tuple(args.include_path))


def task_prompts(lm: Any, args: argparse.Namespace, manager: Any = None) -> list[str]:
    """Every distinct context lm-eval would send the model for these tasks (few-shot exemplars included)."""
    manager = manager or tasks_manager(args)
    contexts: dict[str, None] = {}  # ordered, each context once (multiple-choice docs repeat theirs)
    for task in manager.load(parse_list(args.tasks, "--tasks"))["tasks"].values():
        task.build_all_requests(limit=args.limit, apply_chat_template=bool(args.apply_chat_template),
                                chat_template=lm.apply_chat_template if args.apply_chat_template else None)
        contexts.update((instance.args[0], None) for instance in task.instances)
    if not contexts:
        raise RHError(f"the tasks {args.tasks} gave no prompts")
    return list(contexts)


def head_means(lm: Any, texts: list[str], reference: dict[str, Any]):
    """Each head's mean output over every position of ``texts`` (run one at a time on the unmasked model)."""
    import torch
    from tqdm import tqdm

    from rh_eval.fingerprint import fingerprint
    from rh_models.head_means import HeadMeans
    from rh_models.shape import config_sha256

    if len(lm.masked_heads) or lm.kv is not None:
        raise RHError("head means are taken on the unmasked model; load it without mask_heads / kv_full_heads")
    tokens = 0
    sums = None
    with torch.no_grad(), lm.control.summing_outputs() as output_sums:
        for index, text in enumerate(tqdm(texts, desc="head means", unit="sequence")):
            ids = lm.tok_encode(text)
            if not ids:
                raise RHError(f"reference sequence {index + 1} has no tokens")
            if len(ids) > lm.max_length:
                raise RHError(f"reference sequence {index + 1} has {len(ids)} tokens, more than the model's "
                              f"{lm.max_length}; shorten or split it")
            lm.model(torch.tensor([ids], device=lm.device), use_cache=False)
            tokens += len(ids)
        sums = output_sums()
    if sums is None:
        raise RHError("no reference sequence was run")
    means = HeadMeans.from_sums(sums.cpu(), tokens, {
        "command": "rh means",
        "model": lm.model_alias or str(lm.pretrained),
        "model_config_sha256": config_sha256(lm.model.config),
        "n_layers": lm.n_layers,
        "n_heads": lm.n_heads,
        "head_dim": lm.head_dim,
        "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
        "attention": lm.control.base,
        "reference": reference,
        "sequences": len(texts),
        "fingerprint": fingerprint(lm),
    })
    if means.shape != (lm.n_layers, lm.n_heads, lm.head_dim):
        raise RHError(f"the model's heads output {tuple(means.shape)} means, expected "
                      f"{(lm.n_layers, lm.n_heads, lm.head_dim)}")
    return means


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.is_dir():
        raise RHError(f"--output {output} is a folder")
    if output.exists() and not args.force:
        raise RHError(f"{output} exists; pass --force to replace it")
    check_request(args)
    from rh_eval.models import load_hf

    model_args = parse_model_args(args.model_args)
    manager = tasks_manager(args) if args.tasks is not None else None
    lm = load_hf(args.model, **model_args)  # batch size 1: sequences run one at a time, unpadded
    texts, reference = reference_texts(lm, args, manager)
    means = head_means(lm, texts, reference)
    means.save(output)
    print(f"rh means: {lm.n_layers} x {lm.n_heads} heads, mean over {means.provenance['tokens']} tokens of "
          f"{len(texts)} sequences -> {output}")
    return 0

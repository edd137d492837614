"""The layer and size rules of docs/architecture.md, checked on the source tree (no imports run).

- `ssb/` is the algorithm: it never imports Ray, vLLM, Redis or a web framework, nor the layers
  above it, so it stays importable and testable alone.
- `pipelines/` (Ray jobs) never imports `services/` or `cluster/`; `services/` never imports
  `cluster/`; `cluster/` is the composition root and may import everything.
- No production file over 500 lines, no function over 80: a reader holds each in mind.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("ssb", "pipelines", "services", "cluster")
FORBIDDEN = {
    "ssb": {"ray", "vllm", "redis", "fastapi", "starlette", "uvicorn", "pipelines", "services", "cluster"},
    "pipelines": {"services", "cluster", "redis", "fastapi", "starlette"},
    "services": {"cluster"},
}
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it_nor_the_runtimes_it_must_not_need(layer: str) -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
             for path in _sources(layer)
             for line, name in _imports(ast.parse(path.read_text()))
             if name.split(".")[0] in FORBIDDEN[layer]]
    assert not wrong, "layer rule broken (docs/architecture.md):\n" + "\n".join(wrong)


def test_no_production_file_or_function_is_too_long_to_hold_in_mind() -> None:
    long = []
    for layer in LAYERS:
        for path in _sources(layer):
            text = path.read_text()
            lines = text.count("\n")
            if lines > MAX_FILE_LINES:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_FILE_LINES})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size} lines "
                                    f"(at most {MAX_FUNCTION_LINES})")
    assert not long, "split these where the code has a seam:\n" + "\n".join(long)


def test_every_file_the_architecture_page_names_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {part for part in _backticked(text)
             if part.endswith((".py", ".md", ".yaml")) and "/" in part and not any(c in part for c in "*<>")}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert named and not missing, f"docs/architecture.md names files that are not there: {missing}"


def _backticked(text: str) -> list[str]:
    return text.split("`")[1::2]

"""House rule for pages (developers' guide): a page is short named functions that call ``core`` —
no long function, and no control flow at module level (the Curate page, issue #16)."""
from __future__ import annotations

import ast
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "pages" / "curate.py"
#: the longest function a page may hold, in lines (docstring included)
MAX_LINES = 30


def test_curate_is_short_named_functions():
    tree = ast.parse(PAGE.read_text(encoding="utf-8"))
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES}
    assert not long, f"functions over {MAX_LINES} lines: {long}"
    flow = [f"line {n.lineno}: {type(n).__name__}" for n in tree.body
            if isinstance(n, (ast.If, ast.For, ast.While, ast.With, ast.Try))]
    assert not flow, f"control flow at module level (put it in a named function): {flow}"

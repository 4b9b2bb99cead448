"""House rule for pages (docs/ARCHITECTURE.md, "What a page looks like"; issues #13 and #16): a page
is short named functions and one ``main()`` call at the bottom — no long function, nothing run at
module level but ``boot.ensure_app()`` and ``main()``, no ``st.stop`` (a section that ends the page
early returns)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PAGES = sorted((Path(__file__).resolve().parents[1] / "pages").glob("*.py"))
#: the longest function a page may hold, in lines (docstring included): "about 40" by the guide;
#: Curate was brought to 30 (issue #16) and is held there
MAX_LINES = {"curate.py": 30}
DEFAULT_MAX_LINES = 40


def _calls(node: ast.AST) -> list[str]:
    return [ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_is_short_named_functions_and_one_main_call(page):
    tree = ast.parse(page.read_text(encoding="utf-8"))
    limit = MAX_LINES.get(page.name, DEFAULT_MAX_LINES)
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit}
    assert not long, f"functions over {limit} lines: {long}"
    flow = [f"line {n.lineno}: {type(n).__name__}" for n in tree.body
            if isinstance(n, (ast.If, ast.For, ast.While, ast.With, ast.Try))]
    assert not flow, f"control flow at module level (put it in a named function): {flow}"
    last = tree.body[-1]
    assert isinstance(last, ast.Expr) and _calls(last) == ["main"], "the page must end with one main() call"
    assert "st.stop" not in _calls(tree), "a section that ends the page early returns instead of st.stop"
    run = [f"line {n.lineno}: {ast.unparse(n)[:60]}" for n in tree.body
           if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
           and set(_calls(n)) - {"boot.ensure_app", "main"}]
    assert not run, f"code run at module level (put it in main()): {run}"

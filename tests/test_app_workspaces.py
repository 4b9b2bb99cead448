"""AppTest: the Workspaces page without demo data — the message that explains the layout shows its
file patterns (``*.jpg``) as text, not as markdown emphasis; nothing heavy is built on a visit."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from app_helpers import APP


def test_no_data_message_shows_patterns_as_text(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSETTA_WORKSPACES", str(tmp_path / "ws"))
    monkeypatch.setenv("ROSETTA_DATA", str(tmp_path / "nothing-here"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/workspaces.py").run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert any("no demo data" in w for w in warnings), warnings
    for w in warnings:
        # markdown reads "*.jpg and cifar10/test/<class>/*.jpg" as emphasis: every "*" must be escaped
        assert "*" not in w.replace("&#42;", ""), w

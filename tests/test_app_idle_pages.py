"""AppTest: an idle rerun of each page (a refresh, a widget touched elsewhere) opens no SQLite
connection and replays no edit log — issue #13's "one connection per rerun at most, the log replayed
only when its last sequence number changed", on the pages Curate's own test leaves out. Connections
are counted at ``sqlite3.connect`` (so a page that opened its own ``Workspace`` would be caught),
replays by the shared workspace's counters."""
from __future__ import annotations

import sqlite3

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import APP, run_ready, switch_and_wait
from core import store

PAGES = {"pages/classify.py": "Classify & explain", "pages/settings.py": "Settings",
         "pages/workspaces.py": "Workspaces", "pages/align.py": "Align", "pages/invert.py": "Invert"}


@pytest.mark.parametrize("page", list(PAGES))
def test_an_idle_rerun_opens_no_connection_and_replays_nothing(demo_root, page, monkeypatch):
    from ui import state

    at = run_ready(AppTest.from_file(APP, default_timeout=300))
    at = switch_and_wait(at, page, lambda a: any(t.value == PAGES[page] for t in a.title))
    ws = state.workspace(store.list_workspaces(demo_root)[0])
    opened, connect = [], sqlite3.connect

    def counted(database, *args, **kwargs):
        opened.append(database)
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counted)
    before = dict(ws.stats)
    for _ in range(3):
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    assert opened == [] and ws.stats == before, (opened, before, ws.stats)

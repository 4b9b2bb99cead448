"""Make a page URL opened first on a fresh server go through ``app.py``'s navigation.

Streamlit treats an app with a ``pages/`` folder as a v1 multipage app until the main script has
called ``st.navigation`` once; a first request for ``/curate`` would run ``pages/curate.py`` alone
(no sidebar, no page config). ``app.py`` calls :func:`mark` on every run; a page calls
:func:`ensure_app`, which — when ``app.py`` did not run first — runs ``app.py`` in the same script
run (its ``st.navigation`` shows the requested page) and stops the page that ran alone. Running it
in place, not with ``st.rerun``, keeps the widget event that started the run.
"""
from __future__ import annotations

import threading

_state = threading.local()


def mark() -> None:
    _state.app_ran = True


def ensure_app() -> None:
    if getattr(_state, "app_ran", False):  # app.py ran first in this script thread
        return
    import streamlit as st
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or ctx.fragment_ids_this_run:
        return  # not a script run of this session, or a fragment rerun (the app ran before it)

    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - other Streamlit versions
        return
    if PagesManager.uses_pages_directory:
        import runpy
        from pathlib import Path

        # run the app (its navigation runs the requested page) in this same script run, so the
        # widget that triggered it is not lost, and stop the page script that was run alone
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "app.py"), run_name="__main__")
        st.stop()

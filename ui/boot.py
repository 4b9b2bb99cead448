"""Make a page URL opened first on a fresh server go through ``app.py``'s navigation.

Streamlit treats an app with a ``pages/`` folder as a v1 multipage app until the main script has
called ``st.navigation`` once; a first request for ``/curate`` would run ``pages/curate.py`` alone
(no sidebar, no page config). ``app.py`` calls :func:`mark` on every run; a page calls
:func:`ensure_app`, which — when ``app.py`` did not run first — switches Streamlit to
``st.navigation`` mode and reruns, so ``app.py`` runs and shows the requested page.
"""
from __future__ import annotations

import os
import threading

_state = threading.local()


def mark() -> None:
    _state.app_ran = True


def ensure_app() -> None:
    ran = getattr(_state, "app_ran", False)
    _state.app_ran = False
    if ran or os.environ.get("ROSETTA_APPTEST"):
        return  # AppTest drives app.py itself (and a rerun here confuses its page bookkeeping)
    import streamlit as st

    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - other Streamlit versions
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()

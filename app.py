"""Rosetta: see into and edit a training-free multimodal model (ASIF).

Run with ``streamlit run app.py``. Declares the pages; the sidebar shows the current workspace.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from ui import boot, state  # noqa: E402


def page(file: str, title: str, icon: str, **kw):
    return st.Page(f"pages/{file}", title=title, icon=icon, **kw)


def sections() -> dict[str, list]:
    """The navigation: the model pages, the workspace pages, the labs."""
    return {
        "Model": [
            page("classify.py", "Classify & explain", ":material/image_search:", default=True),
            page("curate.py", "Curate", ":material/tune:"),
            page("map.py", "Map", ":material/scatter_plot:"),
        ],
        "Workspace": [
            page("data.py", "Data", ":material/photo_library:"),
            page("settings.py", "Settings", ":material/settings:"),
            page("workspaces.py", "Workspaces", ":material/folder_open:"),
        ],
        "Labs": [
            page("align.py", "Align", ":material/join:"),
            page("invert.py", "Invert", ":material/swap_horiz:"),
        ],
    }


def sidebar() -> None:
    """The workspace picker and its summary; a broken workspace folder is said, not raised."""
    try:
        ws = state.current_workspace()
    except Exception as error:  # noqa: BLE001 - a broken workspace folder must not hide the app
        ws = None
        st.warning(f"Could not open the workspaces ({type(error).__name__}); see the server log.")
    if ws is not None:
        spaces = state.all_workspaces()
        ids = [w.id for w in spaces]
        names = {w.id: w.name for w in spaces}
        choice = st.selectbox("Workspace", ids, index=ids.index(ws.id), format_func=names.get,
                              key="sidebar_ws")
        if choice != ws.id:
            state.set_workspace(choice)
            st.rerun()
        state.sidebar_summary(ws)
    state.flash()


def main() -> None:
    boot.mark()
    # an emoji favicon is inline; a :material: one would be fetched from fonts.gstatic.com
    st.set_page_config(page_title="Rosetta", page_icon="🔤", layout="wide")
    nav = st.navigation(sections())
    with st.sidebar:
        sidebar()
    nav.run()


main()

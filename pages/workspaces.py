"""Workspaces: create (demo, uploads, folder), switch, duplicate, delete, export.

The page is one entry call, :func:`main`: the table of workspaces, the current one's actions, and
the forms that create a new one.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import boot

boot.ensure_app()

from core import demo, store
from ui import state
from ui.safe import plain
from ui.widgets import export_button, page_header

#: The model file is offered for download up to this size: it is built in memory and then sent (the
#: demo's 35,000 pairs make 0.24 GB; 1.6M pairs would make 10.6 GB).
MODEL_DOWNLOAD_MAX_BYTES = 1024 ** 3


def workspaces_table(current, spaces: list) -> None:
    """Every workspace with its counts, encoders and source; the current one marked."""
    if not spaces:
        st.info("No workspace yet.")
        return
    rows = []
    for w in spaces:
        c = w.counts()
        s = w.settings()
        rows.append({"": "▶" if current is not None and w.id == current.id else "", "name": w.name,
                     "anchor pairs": c["pairs"], "test pictures": c["eval"], "edits": c["edits"],
                     "encoders": f"{s['image_encoder']} + {s['text_encoder']}",
                     "source": w.meta().get("source", {}).get("kind", "")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


def _duplicate_form(current) -> None:
    with st.form("duplicate"):
        new_name = st.text_input("Duplicate as", f"{current.name} copy")
        if st.form_submit_button("Duplicate", icon=":material/content_copy:"):
            try:
                dup = store.duplicate_workspace(current, new_name)
                state.set_workspace(dup.id, f"Created {plain(dup.name)} as a copy of {plain(current.name)}; "
                                            "you are now working in the copy.")
                st.rerun()
            except ValueError as error:
                st.error(plain(error))


def _delete_form(current) -> None:
    with st.form("delete"):
        sure = st.checkbox(f"Yes, delete “{plain(current.name)}” and its edit history")
        if st.form_submit_button("Delete", icon=":material/delete:"):
            if not sure:
                st.warning("Tick the box to confirm.")
            else:
                state.forget(current.path)
                store.delete_workspace(current)
                st.session_state.pop("ws_id", None)
                st.rerun()


def _model_export(current, model) -> None:
    """The model file (anchor embeddings, ids, captions, k, p), written only when asked for."""
    def model_bytes() -> bytes:
        with tempfile.TemporaryDirectory() as d:
            path = model.current_model().save(Path(d) / "model.npz")
            return Path(path).read_bytes()

    n = model.n_anchors
    size = 4 * n * (model.vectors.img.shape[1] + model.vectors.cap.shape[1])
    if size > MODEL_DOWNLOAD_MAX_BYTES:
        kept = (" (its `vectors` folder: memory-mapped .npy files that core.asif.AsifModel.open_mapped reads)"
                if current.vectors_dir.is_dir() else "")
        st.caption(f"The model file ({n:,} anchor pairs, about {size / 1e9:.1f} GB) is larger than the "
                   f"{MODEL_DOWNLOAD_MAX_BYTES / 1e9:.1f} GB a download is built for here; the anchors stay in "
                   f"the workspace's folder{kept}.")
        return
    export_button("Model file (.npz)", ("model.npz", str(current.path), model.key, model.stamp),
                  model_bytes, file_name=f"{current.id}-asif.npz", mime="application/octet-stream",
                  what=f"the model file ({n:,} anchor pairs, about {max(1, round(size / 1e6)):,} MB)",
                  help="Anchor embeddings, pair ids, captions, k and p; load with "
                       "core.asif.AsifModel.load (no pickles).")


def _exports(current) -> None:
    st.markdown("**Export**")
    export_button("Curated pairs (CSV)", ("pairs.csv", str(current.path), current.state().seq),
                  current.export_pairs_csv, file_name=f"{current.id}-pairs.csv", mime="text/csv",
                  what="the curated pairs as CSV")
    job = state.model_job(current)
    if job.done and job.model is not None:
        _model_export(current, job.model)
    else:
        st.caption("The model file can be downloaded once the model is ready.")


def current_actions(current) -> None:
    """Duplicate, delete or export the current workspace."""
    st.subheader(f"Current: {plain(current.name)}")
    a, b, c = st.columns(3)
    with a:
        _duplicate_form(current)
    with b:
        _delete_form(current)
    with c:
        _exports(current)


def _demo_form(spaces: list) -> None:
    """Create a demo workspace (Flickr8k anchors, CIFAR-10 test pictures) of a chosen size."""
    try:
        from core.data import demo_data_root

        root = demo_data_root()
    except ValueError as error:
        st.warning(plain(error))
        return
    st.caption(f"Flickr8k photos with captions as anchors, CIFAR-10 test pictures to measure "
               f"accuracy (from `{root}`).")
    with st.form("demo"):
        name = st.text_input("Name", "demo small" if any(w.id == "demo" for w in spaces) else "demo")
        x, y = st.columns(2)
        n_images = x.number_input("Flickr8k photos (5 captions each)", 10, 7000, 7000, step=100)
        per_class = y.number_input("CIFAR-10 test pictures per class", 1, 1000, 1000, step=50)
        if st.form_submit_button("Create", type="primary"):
            try:
                ws = demo.create_demo_workspace(name, int(n_images), int(per_class))
                state.set_workspace(ws.id, f"Created {plain(ws.name)}; you are now working in it.")
                st.rerun()
            except ValueError as error:
                st.error(plain(error))


def new_workspace(spaces: list) -> None:
    """Create a workspace from the demo data, or go to the Data page for one's own pairs."""
    st.subheader("New workspace")
    t1, t2 = st.tabs(["From the demo data", "From your own pairs"])
    with t1:
        _demo_form(spaces)
    with t2:
        st.caption("Upload photos with captions, or point to a folder on this computer, on the Data page.")
        st.page_link("pages/data.py", label="Bring your own pairs", icon=":material/photo_library:")


def main() -> None:
    page_header("Workspaces", (
        "A workspace is a set of anchor pairs, a labeled test set, the encoders, k and p, and the "
        f"full history of your edits — saved on disk under `{store.workspaces_root()}`. Switch "
        "between workspaces in the sidebar."))
    current = state.current_workspace()
    spaces = state.all_workspaces()
    workspaces_table(current, spaces)
    if current is not None:
        current_actions(current)
    new_workspace(spaces)


main()

"""Workspaces: create (demo, uploads, folder), switch, duplicate, delete, export."""
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
from ui.widgets import export_button

st.title("Workspaces")
st.caption("A workspace is a set of anchor pairs, a labeled test set, the encoders, k and p, and the "
           f"full history of your edits — saved on disk under `{store.workspaces_root()}`. Switch "
           "between workspaces in the sidebar.")

current = state.current_workspace()
spaces = state.all_workspaces()

if spaces:
    rows = []
    for w in spaces:
        c = w.counts()
        s = w.settings()
        rows.append({"": "▶" if current is not None and w.id == current.id else "", "name": w.name,
                     "anchor pairs": c["pairs"], "test pictures": c["eval"], "edits": c["edits"],
                     "encoders": f"{s['image_encoder']} + {s['text_encoder']}",
                     "source": w.meta().get("source", {}).get("kind", "")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
else:
    st.info("No workspace yet.")

if current is not None:
    st.subheader(f"Current: {plain(current.name)}")
    a, b, c = st.columns(3)
    with a.form("duplicate"):
        new_name = st.text_input("Duplicate as", f"{current.name} copy")
        if st.form_submit_button("Duplicate", icon=":material/content_copy:"):
            try:
                dup = store.duplicate_workspace(current, new_name)
                state.set_workspace(dup.id, f"Created {plain(dup.name)} as a copy of {plain(current.name)}; "
                                            "you are now working in the copy.")
                st.rerun()
            except ValueError as error:
                st.error(plain(error))
    with b.form("delete"):
        sure = st.checkbox(f"Yes, delete “{plain(current.name)}” and its edit history")
        if st.form_submit_button("Delete", icon=":material/delete:"):
            if not sure:
                st.warning("Tick the box to confirm.")
            else:
                state.forget(current.path)
                store.delete_workspace(current)
                st.session_state.pop("ws_id", None)
                st.rerun()
    with c:
        st.markdown("**Export**")
        export_button("Curated pairs (CSV)", ("pairs.csv", str(current.path), current.state().seq),
                      current.export_pairs_csv, file_name=f"{current.id}-pairs.csv", mime="text/csv",
                      what="the curated pairs as CSV")
        job = state.model_job(current)
        if job.done and job.model is not None:
            model = job.model

            def model_bytes() -> bytes:
                with tempfile.TemporaryDirectory() as d:
                    path = model.current_model().save(Path(d) / "model.npz")
                    return Path(path).read_bytes()

            n = model.n_anchors
            export_button("Model file (.npz)", ("model.npz", str(current.path), model.key, model.version),
                          model_bytes, file_name=f"{current.id}-asif.npz", mime="application/octet-stream",
                          what=f"the model file ({n:,} anchor pairs, about "
                               f"{max(1, round(n * 6.8 / 1000)):,} MB)",
                          help="Anchor embeddings, pair ids, captions, k and p; load with "
                               "core.asif.AsifModel.load (no pickles).")
        else:
            st.caption("The model file can be downloaded once the model is ready.")

st.subheader("New workspace")
t1, t2 = st.tabs(["From the demo data", "From your own pairs"])
with t1:
    try:
        from core.data import demo_data_root

        root = demo_data_root()
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
    except ValueError as error:
        st.warning(plain(error))
with t2:
    st.caption("Upload photos with captions, or point to a folder on this computer, on the Data page.")
    st.page_link("pages/data.py", label="Bring your own pairs", icon=":material/photo_library:")

"""Data: what the workspace holds (pairs, test pictures) and bringing in your own pairs."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from ui import boot

boot.ensure_app()

from core import demo, store
from ui import state
from ui.widgets import thumbnail_url

st.title("Data")
st.caption("Anchor pairs are photos with a caption; the model is nothing but these pairs and two "
           "frozen encoders. Test pictures (with their true class) measure how good it is.")

ws = state.current_workspace()

# ------------------------------------------------------------------ embedding progress
if ws is not None:
    state.progress_if_building(ws)


def _grid(refs, captions, n_cols=5, size=160):
    cols = st.columns(n_cols)
    for j, (ref, cap) in enumerate(zip(refs, captions)):
        with cols[j % n_cols]:
            url = thumbnail_url(str(ws.resolve(ref)) if ws is not None and not os.path.isabs(ref)
                                else str(ref), size)
            if url:
                st.image(url, width="stretch")
            st.caption(cap)


tab_pairs, tab_test, tab_new = st.tabs(["Anchor pairs", "Test pictures", "Bring your own pairs"])

with tab_pairs:
    if ws is None:
        st.info("No workspace yet: bring your own pairs (third tab) or create the demo on the "
                "Workspaces page.")
    else:
        pairs = ws.pairs()
        c1, c2 = st.columns([3, 1])
        q = c1.text_input("Search captions", key="data_search", placeholder="e.g. a dog in the snow")
        if q:
            pairs = [p for p in pairs if q.lower() in p.caption.lower()]
        by_image: dict[str, list] = {}
        for p in pairs:
            by_image.setdefault(p.image, []).append(p)
        images = list(by_image)
        per_page = 15
        n_pages = max(1, (len(images) + per_page - 1) // per_page)
        page = c2.number_input(f"Page (of {n_pages:,})", 1, n_pages, 1, key="data_page")
        st.caption(f"{len(pairs):,} pair(s) from {len(images):,} photo(s)")
        chunk = images[(page - 1) * per_page: page * per_page]
        _grid([str(ws.resolve(r)) for r in chunk],
              ["  \n".join(f"#{p.pair_id} · {p.caption}" for p in by_image[r]) for r in chunk])
        st.download_button("Download the curated pairs (CSV)", ws.export_pairs_csv(),
                           file_name=f"{ws.id}-pairs.csv", mime="text/csv", icon=":material/download:")

with tab_test:
    if ws is not None:
        items = ws.eval_items()
        labels = sorted({e.label for e in items})
        st.caption(f"{len(items):,} labeled pictures in {len(labels)} classes")
        if items:
            pick = st.selectbox("Class", labels, key="data_eval_class")
            sel = [e for e in items if e.label == pick][:20]
            _grid([str(ws.resolve(e.image)) for e in sel], [e.label for e in sel], n_cols=10, size=96)


# ------------------------------------------------------------------ bring your own
def _staging_dir(key: bytes) -> Path:
    from core.encoders import rosetta_cache_dir

    d = rosetta_cache_dir() / "uploads" / hashlib.sha256(key).hexdigest()[:16]
    d.mkdir(parents=True, exist_ok=True)
    return d


def _safe_name(name: str) -> str | None:
    """The base name of an uploaded file, or None when it is not a plain name."""
    base = os.path.basename(name.replace("\\", "/"))
    if not base or base in (".", "..") or base.startswith("."):
        return None
    return base


def load_uploads(files) -> tuple[object | None, list[str]]:
    """A PairSet from uploaded files: one zip, or images + a CSV (image,caption). Never raises."""
    from core import data

    notes = []
    zips = [f for f in files if f.name.lower().endswith(".zip")]
    if zips:
        if len(zips) > 1 or len(files) > 1:
            notes.append("Upload one zip on its own; using the first zip only.")
        try:
            return data.load_pairs_zip(zips[0].getvalue()), notes
        except ValueError as error:
            return None, notes + [str(error)]
    csvs = [f for f in files if f.name.lower().endswith(".csv")]
    if not csvs:
        return None, ["Add a CSV with columns image,caption (one row per caption) next to the photos, "
                      "or upload a zip holding both."]
    digest = hashlib.sha256(b"".join(hashlib.sha256(f.getvalue()).digest() for f in files)).digest()
    folder = _staging_dir(digest)
    for f in files:
        name = _safe_name(f.name)
        if name is None:
            notes.append(f"Skipped {f.name!r}: not a plain file name.")
            continue
        (folder / name).write_bytes(f.getvalue())
    csv_name = _safe_name(csvs[0].name)
    if len(csvs) > 1:
        notes.append(f"Several CSV files: using {csv_name}.")
    try:
        return data.load_pairs_csv(folder / csv_name, folder, deep=True), notes
    except ValueError as error:
        return None, notes + [str(error)]


def show_report(pairset) -> None:
    rep = pairset.report
    if rep.fatal:
        st.error(f"Nothing could be loaded: {rep.summary()}")
    elif rep.problems:
        st.warning(f"Loaded with problems — {rep.summary()}. Rejected items are listed below; the "
                   "rest is usable.")
    else:
        st.success(f"All good — {rep.summary()}.")
    if rep.problems:
        st.dataframe(pd.DataFrame(rep.rows()), hide_index=True, width="stretch",
                     column_config={"kind": "problem", "item": "file / row", "message": "what happened"})


def use_pairset(pairset, copy: bool, source: dict) -> None:
    """Preview + 'create a workspace' / 'add to the current workspace'."""
    show_report(pairset)
    if pairset is None or len(pairset) == 0:
        return
    st.markdown(f"**Preview** — {len(pairset):,} pairs from {len(pairset.images):,} photos")
    n = min(10, len(pairset))
    _grid([pairset.images[i] for i in pairset.pair_image[:n].tolist()], pairset.captions[:n])
    a, b = st.columns(2)
    with a.form(f"create_{source['kind']}"):
        st.markdown("**Create a new workspace** with these pairs as anchors")
        name = st.text_input("Name", value=f"my pairs {len(store.list_workspaces()) + 1}")
        test = st.radio("Test pictures", ["CIFAR-10 test from the demo data", "none for now"],
                        help="A labeled set to measure accuracy; you can also point to a class-per-"
                             "folder set below.")
        per_class = st.number_input("CIFAR-10 pictures per class", 1, 1000, 100)
        if st.form_submit_button("Create workspace", type="primary"):
            try:
                items = demo.demo_labeled_items(int(per_class)) if test.startswith("CIFAR") else []
                new = store.create_from_pairset(name, pairset, items, copy=copy, source=source)
                state.set_workspace(new.id, f"Created {new.name}; you are now working in it.")
                st.success(f"Created **{new.name}**; its pictures are being embedded now.")
                st.rerun()
            except ValueError as error:
                st.error(str(error))
    with b.form(f"add_{source['kind']}"):
        st.markdown("**Add them to the current workspace** as extra anchors")
        ok = st.form_submit_button("Add to current workspace", disabled=ws is None)
        if ok and ws is not None:
            try:
                model = state.require_model(ws, wait_s=60)
                rows = store.refs_from_pairset(pairset, ws, copy=copy)
                with st.spinner(f"Embedding {len(rows):,} pairs…"):
                    r = state.add_pairs(ws, model, rows, note=f"from {source['kind']}")
                st.success(r.message())
            except ValueError as error:
                st.error(str(error))


with tab_new:
    how = st.radio("From", ["Upload files", "A folder on this computer"], horizontal=True, key="byo_how")
    if how == "Upload files":
        st.caption("Either a **zip** holding photos and a `captions.csv` (columns `image,caption`), or "
                   "the **photos and the CSV** together. Bad files are listed and skipped; the rest "
                   "loads.")
        files = st.file_uploader("Photos + captions.csv, or one zip", accept_multiple_files=True,
                                 type=["zip", "csv", "jpg", "jpeg", "png", "webp", "bmp", "gif"],
                                 key="byo_files")
        if files:
            with st.spinner("Checking the files…"):
                pairset, notes = load_uploads(files)
            for n in notes:
                st.warning(n)
            if pairset is not None:
                use_pairset(pairset, copy=True, source={"kind": "upload"})
    else:
        st.caption("A folder with the photos and a `captions.csv` (`image,caption`), a CSV file, or a "
                   "COCO captions JSON. Files stay where they are (nothing is copied).")
        path = st.text_input("Path", key="byo_path", placeholder="/home/me/photos")
        if path:
            from core import data

            try:
                with st.spinner("Checking the folder…"):
                    pairset = data.load_pairs(path)
                use_pairset(pairset, copy=False, source={"kind": "folder", "path": path})
            except ValueError as error:
                st.error(str(error))

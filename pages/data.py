"""Data: what the workspace holds (pairs, test pictures) and bringing in your own pairs."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import streamlit as st

from ui import boot

boot.ensure_app()

from core import data, demo, interchange, store
from ui import state
from ui.safe import plain
from ui.widgets import count, export_button, page_header, thumbnail_url


def _grid(ws, refs, captions, n_cols=5, size=160):
    cols = st.columns(n_cols)
    for j, (ref, cap) in enumerate(zip(refs, captions)):
        with cols[j % n_cols]:
            url = thumbnail_url(str(ws.resolve(ref)) if ws is not None and not os.path.isabs(ref)
                                else str(ref), size)
            if url:
                st.image(url, width="stretch")
            st.caption(cap)  # already made plain by the caller


# ------------------------------------------------------------------ what the workspace holds
PER_PAGE = 15   # photos per page of the pairs tab


@st.cache_resource(show_spinner=False, max_entries=4)
def _photo_order(ws_path: str, seq: int, query: str, _ws) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`core.store.Workspace.photo_order`, kept server-wide until the next edit."""
    return _ws.photo_order(query)


def pairs_tab(ws) -> None:
    """The anchor pairs, grouped by photo, searchable, a page at a time; the CSV download."""
    if ws is None:
        st.info("No workspace yet: bring your own pairs (third tab) or create the demo on the "
                "Workspaces page.")
        return
    c1, c2 = st.columns([3, 1])
    q = c1.text_input("Search captions", key="data_search", placeholder="e.g. a dog in the snow")
    photo, ids = _photo_order(str(ws.path), ws.state().seq, q, ws)
    n_photos = int(photo[-1]) + 1 if photo.size else 0
    n_pages = max(1, (n_photos + PER_PAGE - 1) // PER_PAGE)
    page = c2.number_input(f"Page (of {n_pages:,})", 1, n_pages, 1, key="data_page")
    st.caption(f"{count(len(ids), 'pair')} from {count(n_photos, 'photo')}")
    lo, hi = np.searchsorted(photo, [(page - 1) * PER_PAGE, page * PER_PAGE])
    by_image: dict[str, list] = {}
    for p in ws.pairs_by_id(ids[lo:hi]):
        by_image.setdefault(p.image, []).append(p)
    _grid(ws, [str(ws.resolve(r)) for r in by_image],
          ["  \n".join(f"#{p.pair_id} · {plain(p.caption)}" for p in group) for group in by_image.values()])
    export_button("Download the curated pairs (CSV)", ("pairs.csv", str(ws.path), ws.state().seq),
                  ws.export_pairs_csv, file_name=f"{ws.id}-pairs.csv", mime="text/csv",
                  what="the curated pairs as CSV")


def eval_tab(ws) -> None:
    """The labeled test pictures, a class at a time."""
    if ws is None:
        return
    items = ws.eval_items()
    labels = sorted({e.label for e in items})
    st.caption(f"{len(items):,} labeled pictures in {len(labels)} classes")
    if items:
        pick = st.selectbox("Class", labels, key="data_eval_class")
        sel = [e for e in items if e.label == pick][:20]
        _grid(ws, [str(ws.resolve(e.image)) for e in sel], [plain(e.label) for e in sel], n_cols=10, size=96)


# ------------------------------------------------------------------ bring your own
def load_uploads(files):
    """A PairSet from uploaded files (one zip, or images + a CSV), staged by core; kept for this
    session while the same files are uploaded, so reruns reuse it and its staging folder."""
    digest = hashlib.sha256(b"".join(f.name.encode() + b"\0" + hashlib.sha256(f.getvalue()).digest()
                                     for f in files)).hexdigest()
    held = st.session_state.get("byo_staged")
    if held is None or held[0] != digest:
        held = (digest, data.stage_uploads([(f.name, f.getvalue()) for f in files]))
        st.session_state["byo_staged"] = held
    return held[1]


def show_report(pairset) -> None:
    rep = pairset.report
    if rep.fatal:
        first = next((p.message for p in rep.problems if p.severity == "error"), rep.summary())
        st.error(f"Nothing could be loaded: {plain(first)}.")
    elif rep.problems:
        st.warning(f"Loaded with problems — {rep.summary()}. Rejected items are listed below; the "
                   "rest is usable.")
    else:
        st.success(f"All good — {rep.summary()}.")
    if rep.problems:
        st.dataframe(pd.DataFrame(rep.rows()), hide_index=True, width="stretch",
                     column_config={"kind": "problem", "item": "file / row", "message": "what happened"})


def _create_form(pairset, copy: bool, source: dict) -> None:
    """Form: a new workspace with ``pairset`` as its anchors and the test pictures picked here."""
    st.markdown("**Create a new workspace** with these pairs as anchors")
    name = st.text_input("Name", value=f"my pairs {len(store.list_workspaces()) + 1}")
    test = st.radio("Test pictures", ["CIFAR-10 test from the demo data", "none for now"],
                    help="A labeled set to measure accuracy; you can also point to a class-per-"
                         "folder set below.")
    per_class = st.number_input("CIFAR-10 pictures per class", 1, 1000, 100)
    test_folder = st.text_input(
        "Separate test folder (optional)", "",
        help="A folder on this computer with one sub-folder per class. Its pictures become the "
             "held-out test part, and the labeled set above is used for tuning only.")
    if st.form_submit_button("Create workspace", type="primary"):
        try:
            items = demo.demo_labeled_items(int(per_class)) if test.startswith("CIFAR") else []
            if test_folder.strip():
                if not items:
                    raise ValueError("A separate test folder needs a labeled set to tune on; "
                                     "pick the CIFAR-10 pictures above as well.")
                held_out = data.load_labeled(data.allowed_folder(test_folder))
                items = items + store.eval_items_from_labeled(held_out, part="test")
            new = store.create_from_pairset(name, pairset, items, copy=copy, source=source)
            state.set_workspace(new.id, f"Created {plain(new.name)}; you are now working in it.")
            st.rerun()
        except ValueError as error:
            st.error(plain(error))


def _add_form(ws, pairset, copy: bool, source: dict) -> None:
    """Form: add ``pairset`` to the current workspace as extra anchors (one edit)."""
    st.markdown("**Add them to the current workspace** as extra anchors")
    added = st.session_state.pop("data_added", None)
    if added:
        st.success(added, icon=":material/check_circle:")
    ok = st.form_submit_button("Add to current workspace", disabled=ws is None)
    if ok and ws is not None:
        try:
            model = state.require_model(ws, wait_s=60)
            rows = store.refs_from_pairset(pairset, ws, copy=copy)
            with st.spinner(f"Embedding {count(len(rows), 'pair')}…"):
                r = state.add_pairs(ws, model, rows, note=f"from {source['kind']}")
            st.session_state["data_added"] = r.message()
            st.rerun()  # the sidebar (drawn before this page) shows the new count
        except ValueError as error:
            st.error(plain(error))


def use_pairset(ws, pairset, copy: bool, source: dict) -> None:
    """Preview + 'create a workspace' / 'add to the current workspace'."""
    show_report(pairset)
    if len(pairset) == 0:
        return
    st.markdown(f"**Preview** — {count(len(pairset), 'pair')} from {count(len(pairset.images), 'photo')}")
    n = min(10, len(pairset))
    _grid(ws, [pairset.images[i] for i in pairset.pair_image[:n].tolist()],
          [plain(c) for c in pairset.captions[:n]])
    a, b = st.columns(2)
    with a.form(f"create_{source['kind']}"):
        _create_form(pairset, copy, source)
    with b.form(f"add_{source['kind']}"):
        _add_form(ws, pairset, copy, source)


# ------------------------------------------------------------------ precomputed vectors
def allowed_source(path: str):
    """A folder, or a ``.parquet`` file in a folder, inside the allowed locations (one sentence otherwise)."""
    text = str(path).strip()
    if text.endswith(".parquet"):
        folder = data.allowed_folder(os.path.dirname(text))
        source = folder / os.path.basename(text)
        if not source.is_file():
            raise ValueError("That .parquet file does not exist.")
        return source
    return data.allowed_folder(text)


def imported(source, image_encoder: str, text_encoder: str):
    """The pairs of a precomputed source (``core.interchange``), kept for this session while the
    same source (every file's size and time: :func:`core.interchange.source_key`) and encoder names
    are asked for."""
    stamp = (str(source), interchange.source_key(source), image_encoder, text_encoder)
    held = st.session_state.get("byo_imported")
    if held is None or held[0] != stamp:
        with st.spinner("Reading the vectors…"):
            pairs = interchange.import_pairs(source, image_encoder=image_encoder or None,
                                             text_encoder=text_encoder or None)
        held = (stamp, pairs)
        st.session_state["byo_imported"] = held
    return held[1]


def runnable(pairs) -> bool:
    """Whether both encoders run here (a workspace embeds its test pictures and class prompts with
    them); otherwise one sentence naming the command-line way, and False."""
    for role, name in (("image", pairs.image_encoder), ("text", pairs.text_encoder)):
        try:
            interchange.require_encoder(name, f"The {role} side")
        except ValueError:
            what, flag = (("test pictures", "--test VECTORS.parquet") if role == "image"
                          else ("class prompts", "--prompt-embeddings FILE.npy"))
            st.error(f"The {role} encoder {plain(name)} cannot run here, so the app cannot embed this "
                     f"workspace's {what}; the command line can evaluate these pairs with python -m core "
                     f"asif eval --anchors FOLDER {flag}.")
            return False
    return True


def create_from_vectors(pairs, source) -> None:
    """Form: a new workspace of imported pairs (their vectors are kept in it)."""
    with st.form("create_precomputed"):
        st.markdown("**Create a new workspace** with these pairs as anchors")
        name = st.text_input("Name", value=f"imported {len(store.list_workspaces()) + 1}")
        per_class = st.number_input("CIFAR-10 test pictures per class (from the demo data)", 1, 1000, 100)
        if st.form_submit_button("Create workspace", type="primary"):
            try:
                with st.spinner(f"Saving {count(len(pairs), 'pair')} in the new workspace…"):
                    new, named = interchange.create_vector_workspace(
                        name, pairs, demo.demo_labeled_items(int(per_class)), state.embedding_cache(),
                        source={"kind": "precomputed", "path": str(source)})
                note = (f" {count(named, 'picture')} of {len(pairs.images):,} are not files the app may read, so "
                        "their captions are shown alone." if named else "")
                state.set_workspace(new.id, f"Created {plain(new.name)} from precomputed vectors.{note}")
                st.rerun()
            except ValueError as error:
                st.error(plain(error))


def precomputed_vectors(ws) -> None:
    """Bring pairs someone already embedded: clip-retrieval output, parquet, a saved datasets folder
    or an imagefolder with vector columns; the encoders that made them are named here."""
    st.caption("Vectors someone already computed: a **clip-retrieval** output (`img_emb/`, `text_emb/`, "
               "`metadata/`), **parquet** with vector columns, a saved Hugging Face **datasets** folder, "
               "or an **imagefolder** with `metadata.jsonl`. The vectors are kept in the new workspace; "
               "pictures that are files here show as thumbnails, others by their caption alone.")
    path = st.text_input("Folder or .parquet file", key="byo_vectors_path", placeholder="/data/cc3m-vectors")
    if not path:
        return
    try:
        source = allowed_source(path)
        if interchange.detect_format(source) is None:
            raise ValueError("That folder holds no precomputed vectors in a format Rosetta reads "
                             "(clip-retrieval, parquet, a saved datasets folder, an imagefolder).")
        recorded = interchange.recorded_encoders(source)
        a, b = st.columns(2)
        ie = a.text_input("Image encoder that made the vectors", recorded.get("image_encoder", ""),
                          key="byo_image_encoder", help="e.g. efficientnet-lite0; the test pictures are embedded with it.")
        te = b.text_input("Text encoder that made the vectors", recorded.get("text_encoder", ""),
                          key="byo_text_encoder", help="e.g. minilm; the class prompts are embedded with it.")
        pairs = imported(source, ie.strip(), te.strip())
        dropped = f"; {count(len(pairs.skipped), 'row')} left out (zero or not finite)" if pairs.skipped else ""
        st.success(f"{count(len(pairs), 'pair')} from {count(len(pairs.images), 'picture')}: "
                   f"{plain(pairs.image_encoder)} {pairs.image_vectors.shape[1]}-d pictures, "
                   f"{plain(pairs.text_encoder)} {pairs.text_vectors.shape[1]}-d captions{dropped}.")
        n = min(10, len(pairs))
        _grid(ws, interchange.picture_refs([pairs.images[i] for i in pairs.pair_image[:n].tolist()]),
              [plain(c) for c in pairs.captions[:n]])
        if runnable(pairs):
            create_from_vectors(pairs, source)
    except ValueError as error:
        st.error(plain(error))


# ------------------------------------------------------------------ bring your own: the tab
def upload_files(ws) -> None:
    """Pairs from uploaded files (a zip, or photos + captions.csv), copied into the workspace."""
    st.caption("Either a **zip** holding photos and a `captions.csv` (columns `image,caption`), or "
               "the **photos and the CSV** together. Bad files are listed and skipped; the rest "
               "loads.")
    files = st.file_uploader("Photos + captions.csv, or one zip", accept_multiple_files=True,
                             type=["zip", "csv", "jpg", "jpeg", "png", "webp", "bmp", "gif"],
                             key="byo_files")
    if not files:
        st.session_state.pop("byo_staged", None)
        return
    with st.spinner("Checking the files…"):
        pairset = load_uploads(files)
    use_pairset(ws, pairset, copy=True, source={"kind": "upload"})


def from_folder(ws) -> None:
    """Pairs from a folder on this computer (files stay where they are)."""
    st.caption("A folder with the photos and a `captions.csv` (`image,caption`) or one COCO "
               "captions JSON, inside the data location or a folder listed in "
               "`ROSETTA_ALLOWED_ROOTS`. Files stay where they are (nothing is copied).")
    path = st.text_input("Folder", key="byo_path", placeholder="/home/me/photos")
    if not path:
        return
    try:
        folder = data.allowed_folder(path)
        with st.spinner("Checking the folder…"):
            pairset = data.load_pairs_folder(folder)
        use_pairset(ws, pairset, copy=False, source={"kind": "folder", "path": str(folder)})
    except ValueError as error:
        st.error(plain(error))


def bring_your_own(ws) -> None:
    how = st.radio("From", ["Upload files", "A folder on this computer", "Precomputed vectors"],
                   horizontal=True, key="byo_how")
    if how == "Precomputed vectors":
        precomputed_vectors(ws)
    elif how == "Upload files":
        upload_files(ws)
    else:
        from_folder(ws)


def main() -> None:
    page_header("Data", "Anchor pairs are photos with a caption; the model is nothing but these pairs and two "
                "frozen encoders. Test pictures (with their true class) measure how good it is.")
    ws = state.current_workspace()
    if ws is not None:
        state.progress_if_building(ws)
    tab_pairs, tab_test, tab_new = st.tabs(["Anchor pairs", "Test pictures", "Bring your own pairs"])
    with tab_pairs:
        pairs_tab(ws)
    with tab_test:
        eval_tab(ws)
    with tab_new:
        bring_your_own(ws)


main()

"""Map: every anchor pair on one zoomable map; lasso -> preview -> remove; search; quality flags."""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from ui import boot

boot.ensure_app()

from core import flags as F  # noqa: E402
from core import layout as L  # noqa: E402
from ui import state  # noqa: E402
from ui.map_figure import COLOURS, figure  # noqa: E402
from ui.widgets import image_path, metrics_header, pct, thumbnail_url  # noqa: E402

st.title("Map")
st.caption("Every anchor pair on one map: pairs that look alike sit together. Lasso or box-select a "
           "region to preview the accuracy without those pairs, remove them (one undoable edit) or "
           "export them; colour and filter by influence, suspicious captions, duplicates and outliers.")

ws = state.require_workspace()
model = state.require_model(ws)
bank = model.vectors
#: the pairs the map shows: every pair the workspace holds whose vectors exist (a first start on an
#: empty cache embeds the rest in the background; quarantined pairs have none)
OK = np.flatnonzero(bank.ok)

SOURCES = {"photos": "photo embeddings", "captions": "caption embeddings",
           "relative": "ASIF relative representation"}
HIGHLIGHT = "map_highlight"  # pair ids set by Classify & explain: the anchors behind its last picture
MAX_THUMBS = 48


# ------------------------------------------------------------------------------ background jobs
@dataclass
class Job:
    fraction: float = 0.0
    message: str = "Starting"
    result: object = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    done: bool = False

    def progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), message


@st.cache_resource(show_spinner=False)
def _jobs() -> dict:
    """Server-wide: ``{key: Job}`` for UMAP layouts and flag tables (shared by sessions)."""
    return {"lock": threading.Lock(), "jobs": {}}


def _run(key: tuple, work) -> Job:
    """The job ``key`` (started in a background thread on first request)."""
    reg = _jobs()
    with reg["lock"]:
        job = reg["jobs"].get(key)
        if job is None:
            job = reg["jobs"][key] = Job()

            def target():
                try:
                    job.result = work(job.progress)
                except Exception as error:  # noqa: BLE001 - shown on the page
                    traceback.print_exc()
                    job.error = f"{type(error).__name__}: {error}"
                finally:
                    job.done = True

            threading.Thread(target=target, daemon=True, name=f"rosetta-map-{key[-1]}").start()
    return job


def _key(what: str) -> tuple:
    return (str(ws.path), bank.key, len(bank.pair_ids), len(OK), what)


def _photos() -> tuple[np.ndarray, np.ndarray]:
    """``(photo rows used by the shown pairs, each shown pair's row among them)``."""
    used, rows = np.unique(bank.pair_img[OK], return_inverse=True)
    return used, rows.ravel()


def _vectors(source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(vectors, rows)``: what is laid out, and each shown pair's row in it (None: one row per pair)."""
    if source == "photos":
        used, rows = _photos()
        return bank.img[used], rows
    if source == "captions":
        return bank.cap[OK], None
    return L.relative_features(bank.img[bank.pair_img[OK]], bank.cap[OK], model.k, bank.p), None


def _place(xy: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return xy if rows is None else L.spread_copies(xy, rows)


@st.cache_resource(show_spinner="Drawing the instant map (PCA)…", max_entries=8)
def _pca(ws_path: str, key: str, n: int, n_ok: int) -> np.ndarray:
    x, rows = _vectors("photos")
    return _place(L.layout(x, "pca", cache_dir=ws.state_dir), rows)


def _umap(source: str) -> Job:
    def work(progress):
        progress(0.0, "Preparing the vectors")
        x, rows = _vectors(source)
        return _place(L.layout(x, "umap", cache_dir=ws.state_dir, progress=progress), rows)
    return _run(_key(f"umap-{source}"), work)


def _flags() -> Job:
    def work(progress):
        used, rows = _photos()
        progress(0.0, "Thumbnails of the photos (to confirm near-duplicates)")
        thumbs = F.thumbnails([str(ws.resolve(bank.img_refs[u])) for u in used])
        return F.pair_flags(bank.img[used], rows, bank.cap[OK], [bank.captions[i] for i in OK],
                            photo_thumbs=thumbs, progress=progress)
    return _run(_key("flags"), work)


# ------------------------------------------------------------------------------ the pair table
def _table() -> pd.DataFrame:
    """One row per shown pair (``OK``): ids, caption, status, influence on the tuning pictures,
    nearest class, flags."""
    base = {p.pair_id: p.base for p in ws.all_pairs()}
    active = model.active_ids()
    ids = bank.pair_ids[OK]
    status = np.array(["removed" if int(i) not in active else ("kept" if base.get(int(i), True) else "added")
                       for i in ids])
    state.start_influence(model)  # the Curate page's table, computed in the background; NaN until then
    rows, _, _ = state.influence_snapshot(model)
    influence = {r["pair_id"]: r["loo_delta"] for r in rows or []}
    prompts = bank.prompts / np.linalg.norm(bank.prompts, axis=1, keepdims=True)
    nearest = np.asarray(bank.prompt_classes)[np.argmax(bank.cap[OK] @ prompts.T, axis=1)]
    df = pd.DataFrame({
        "pair_id": ids, "caption": [bank.captions[i] for i in OK], "image": [bank.pair_refs[i] for i in OK],
        "status": status,
        "influence": [100 * influence.get(int(i), np.nan) for i in ids],
        "nearest class": np.asarray(bank.classes)[nearest],
    })
    job = _flags()
    if job.done and job.result is not None:
        for name, col in job.result.items():
            df[name] = col
    return df


FILTERS = {  # label -> boolean column expression
    "near-duplicate photos": lambda d: d["photo_dup_group"] >= 0,
    "near-duplicate captions": lambda d: d["caption_dup_group"] >= 0,
    "photo outliers": lambda d: d["photo_outlier"],
    "caption outliers": lambda d: d["caption_outlier"],
    "caption-photo mismatch": lambda d: d["mismatch"],
    "removed": lambda d: d["status"] == "removed",
    "added": lambda d: d["status"] == "added",
}


def _selected(event) -> list[int]:
    sel = getattr(event, "selection", None) or {}
    return sorted({int(p["customdata"]) for p in sel.get("points", []) if "customdata" in p})


# ------------------------------------------------------------------------------ edits
def _step(direction: str, seq: int) -> None:
    """Undo / redo the edit the user saw (``seq``); a newer edit on top is refused, not undone."""
    try:
        (state.undo if direction == "undo" else state.redo)(ws, state.require_model(ws), expected_seq=seq,
                                                            where="map")
    except ValueError as error:
        st.session_state["edit_error"] = str(error)


def _edit_bar() -> None:
    metrics_header(model, ws)
    c1, c2 = st.columns(2)
    for column, label, pending in ((c1, "Undo", ws.peek_undo()), (c2, "Redo", ws.peek_redo())):
        column.button(label, icon=f":material/{label.lower()}:", disabled=pending is None, width="stretch",
                      key=f"map_{label.lower()}", on_click=_step,
                      args=(label.lower(), None if pending is None else pending.seq))
    error = st.session_state.pop("edit_error", None)
    if error:
        st.error(error)


def act_on(chosen: list[int], df: pd.DataFrame, where: str) -> None:
    """What-if preview, Remove (one edit), CSV export and thumbnails of the pairs ``chosen``."""
    active = model.active_ids()
    live = [i for i in chosen if i in active]
    sel = df[df["pair_id"].isin(chosen)]
    a, b, c = st.columns([3, 1.2, 1])
    if live:
        try:
            what = model.what_if_remove(live)
            a.info(f"What if these {len(live):,} pair(s) were removed: tuning {pct(what.before.tune)} → "
                   f"{pct(what.after.tune)}; test {pct(what.before.test)} → {pct(what.after.test)}. "
                   f"{what.n_changed:,} prediction(s) would change.")
        except ValueError as error:
            a.warning(str(error))
        if b.button(f"Remove {len(live):,} pair(s)", type="primary", icon=":material/delete:",
                    width="stretch", key=state.selection_key(f"remove_{where}")):
            try:
                state.remove_pairs(ws, model, live, note=f"from Map ({where})", where="map")
                st.rerun()
            except ValueError as error:
                st.error(str(error))
    else:
        a.caption(f"{len(chosen):,} pair(s) selected, none of them in the current anchor set.")
    c.download_button("Export CSV", sel.to_csv(index=False).encode("utf-8"), file_name="pairs.csv",
                      mime="text/csv", icon=":material/download:", width="stretch", key=f"csv_{where}")
    show = sel.head(MAX_THUMBS)
    grid = pd.DataFrame({"photo": [thumbnail_url(image_path(ws, r), 64) for r in show["image"]],
                         "caption": show["caption"], "pair": show["pair_id"], "status": show["status"]})
    st.dataframe(grid, hide_index=True, row_height=56, height=min(420, 60 + 56 * len(grid)),
                 column_config={"photo": st.column_config.ImageColumn("photo", width="small"),
                                "caption": st.column_config.TextColumn("caption", width="large")},
                 key=f"thumbs_{where}")
    if len(sel) > MAX_THUMBS:
        st.caption(f"Showing the first {MAX_THUMBS} of {len(sel):,}; the CSV has them all.")


# ------------------------------------------------------------------------------ the page
_edit_bar()
last = st.session_state.get("last_edit")
if last:
    st.success(last["message"], icon=":material/check_circle:")

tab_map, tab_search = st.tabs(["Map", "Search anchors"])


def map_panel() -> None:
    df = _table()
    k1, k2, k3 = st.columns([1, 1.4, 1.4])
    source = k1.selectbox("Map of", list(SOURCES), format_func=SOURCES.get, key="map_source")
    colour = k2.selectbox("Colour by", list(COLOURS), key="map_colour")
    shown_flags = k3.multiselect("Show only", list(FILTERS), key="map_filter",
                                 placeholder="all pairs (or pick flags)")
    text = st.text_input("…whose caption contains", key="map_text", placeholder="e.g. snow, dog, red")

    job = _umap(source)
    if job.done and job.result is not None:
        xy = job.result
        st.caption(f"UMAP layout of the {SOURCES[source]}.")
    else:
        xy = _pca(str(ws.path), bank.key, len(bank.pair_ids), len(OK))
        if job.error:
            st.caption(f"Instant PCA layout of the photo embeddings; UMAP could not be computed: {job.error}")
    fjob = _flags()
    if fjob.error:
        st.caption(f"Flags unavailable: {fjob.error}")
    if _computing():
        _progress(source)

    mask = np.ones(len(df), dtype=bool)
    for name in shown_flags:
        try:
            mask &= FILTERS[name](df).to_numpy(dtype=bool)
        except KeyError:
            st.caption(f"“{name}” is still being computed; showing all pairs for it.")
    if text:
        mask &= df["caption"].str.contains(text, case=False, regex=False).to_numpy()
    shown = df[mask]
    highlight = [int(i) for i in st.session_state.get(HIGHLIGHT, [])]
    event = st.plotly_chart(figure(shown, xy[mask], colour, highlight), on_select="rerun",
                            selection_mode=("lasso", "box"), key=state.selection_key("map_plot"), config={"displaylogo": False})
    picked = _selected(event)
    everything = st.checkbox(f"Select all {len(shown):,} pairs shown", key=state.selection_key("map_all"),
                             disabled=len(shown) == len(df))
    chosen = shown["pair_id"].astype(int).tolist() if everything and len(shown) < len(df) else picked
    if chosen:
        act_on(chosen, df, "map")
    else:
        st.caption("Lasso or box-select points (toolbar above the map) to preview removing them.")


def _computing() -> bool:
    return not (_umap(st.session_state.get("map_source", "photos")).done and _flags().done)


@st.fragment(run_every=1.5)
def _progress(source: str) -> None:
    """The progress of UMAP and the flags, redrawn alone; the page reruns when both are done (the
    map itself is not in a fragment: a selection event must not point at a fragment a rerun dropped)."""
    if not _computing():
        st.rerun()
    job, fjob = _umap(source), _flags()
    parts = []
    if not job.done:
        parts.append(f"Instant PCA layout of the photo embeddings while UMAP of the {SOURCES[source]} "
                     f"runs: {job.message} ({100 * job.fraction:.0f}%, {time.time() - job.started:.0f} s).")
    if not fjob.done:
        parts.append(f"Computing flags: {fjob.message} ({100 * fjob.fraction:.0f}%).")
    st.caption(" ".join(parts))


@st.cache_resource(show_spinner="Preparing the search (once per anchor set)…", max_entries=4)
def _search(ws_path: str, key: str, n: int, n_ok: int, version: int):
    from core.anchor_search import AnchorSearch

    used, rows = _photos()
    return AnchorSearch(model.current_model(), bank.img[used], rows, bank.cap[OK])


@st.cache_resource(show_spinner=False)
def _text_encoder(name: str):
    from core.encoders import get_encoder

    return get_encoder(name)


def search_panel() -> None:
    how = st.radio("Search by", ["text", "picture"], horizontal=True, key="search_how")
    vec = None
    if how == "text":
        q = st.text_input("Describe what you look for", key="search_text", max_chars=300,
                          placeholder="e.g. children playing in the snow")
        if q.strip():
            vec = _text_encoder(bank.text_encoder).encode_texts([q.strip()])[0]
    else:
        up = st.file_uploader("A picture", type=["jpg", "jpeg", "png", "webp", "bmp"], key="search_pic")
        if up is not None:
            try:
                vec = bank.embed_picture(up.getvalue())
            except ValueError as error:
                st.error(str(error))
    if vec is None:
        st.caption("Finds pairs by meaning: the encoder's nearest neighbours on the same side, and "
                   "ASIF retrieval across sides (through the anchors' relative representations).")
        return
    search = _search(str(ws.path), bank.key, len(bank.pair_ids), len(OK), model.version)
    t0 = time.perf_counter()
    found = search.by_text(vec) if how == "text" else search.by_image(vec)
    ms = 1000 * (time.perf_counter() - t0)
    df = _table()
    mode = st.radio("Results", ["encoder neighbours", "ASIF retrieval"], horizontal=True, key="search_mode")
    pos, score = found["encoder" if mode == "encoder neighbours" else "asif"]
    res = df.iloc[pos].assign(score=score)
    st.caption(f"{len(res)} pairs in {ms:.0f} ms.")
    event = st.dataframe(
        pd.DataFrame({"photo": [thumbnail_url(image_path(ws, r), 96) for r in res["image"]],
                      "caption": res["caption"], "score": res["score"], "pair": res["pair_id"],
                      "status": res["status"]}),
        hide_index=True, row_height=72, on_select="rerun", selection_mode="multi-row",
        key=state.selection_key("search_table"),
        column_config={"photo": st.column_config.ImageColumn("photo", width="small"),
                       "caption": st.column_config.TextColumn("caption", width="large"),
                       "score": st.column_config.NumberColumn(format="%.3f")})
    rows = event.selection.rows if event else []
    every = st.checkbox(f"Select all {len(res)} results", key=state.selection_key("search_all"))
    chosen = res["pair_id"].astype(int).tolist() if every else [int(res.iloc[i]["pair_id"]) for i in rows]
    if chosen:
        act_on(chosen, df, "search")


with tab_map:
    map_panel()
with tab_search:
    search_panel()

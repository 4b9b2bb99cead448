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
from core.arrays import sample_groups  # noqa: E402
from core.data import spreadsheet_cell  # noqa: E402
from core.live import LiveModel, WorkspaceVectors  # noqa: E402
from core.store import Workspace, portable_ref  # noqa: E402
from ui import state  # noqa: E402
from ui.map_figure import COLOURS, figure  # noqa: E402
from ui.safe import plain  # noqa: E402
from ui.widgets import (count, image_path, metrics_header, page_header, thumbnail_url,  # noqa: E402
                        what_if_sentence)

SOURCES = {"photos": "photo embeddings", "captions": "caption embeddings",
           "relative": "ASIF relative representation"}
HIGHLIGHT = "map_highlight"  # pair ids set by Classify & explain: the anchors behind its last picture
MAX_THUMBS = 48
#: The map lays out at most this many pairs: above it, a fixed random sample of whole photos
#: (``core.arrays.sample_groups``; a 100,000-pair UMAP takes minutes here, 1.6M would take hours).
MAP_MAX_PAIRS = 100_000


@dataclass(frozen=True)
class View:
    """What the page draws from: the workspace, its live model, the vectors, and ``ok``: the pairs the
    map shows (every pair the workspace holds whose vectors exist; a first start on an empty cache
    embeds the rest in the background; quarantined pairs have none)."""
    ws: Workspace
    model: LiveModel
    bank: WorkspaceVectors
    ok: np.ndarray


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
                    job.error = (str(error) if isinstance(error, ValueError)
                                 else "an unexpected error (the details are in the server log)")
                finally:
                    job.done = True

            threading.Thread(target=target, daemon=True, name=f"rosetta-map-{key[-1]}").start()
    return job


def _key(v: View, what: str) -> tuple:
    return (str(v.ws.path), v.bank.key, len(v.bank.pair_ids), len(v.ok), what)


def _photos(v: View) -> tuple[np.ndarray, np.ndarray]:
    """``(photo rows used by the shown pairs, each shown pair's row among them)``."""
    used, rows = np.unique(v.bank.pair_img[v.ok], return_inverse=True)
    return used, rows.ravel()


def _vectors(v: View, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(vectors, rows)``: what is laid out, and each shown pair's row in it (None: one row per pair)."""
    bank = v.bank
    if source == "photos":
        used, rows = _photos(v)
        return bank.img[used], rows
    if source == "captions":
        return bank.cap[v.ok], None
    return L.relative_features(bank.img[bank.pair_img[v.ok]], bank.cap[v.ok], v.model.k, bank.p), None


def _place(xy: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return xy if rows is None else L.spread_copies(xy, rows)


@st.cache_resource(show_spinner="Drawing the instant map (PCA)…", max_entries=8)
def _pca(ws_path: str, key: str, n: int, n_ok: int, _v: View) -> np.ndarray:
    x, rows = _vectors(_v, "photos")
    return _place(L.layout(x, "pca", cache_dir=_v.ws.state_dir), rows)


def _umap(v: View, source: str) -> Job:
    def work(progress):
        progress(0.0, "Preparing the vectors")
        x, rows = _vectors(v, source)
        return _place(L.layout(x, "umap", cache_dir=v.ws.state_dir, progress=progress), rows)
    return _run(_key(v, f"umap-{source}"), work)


def _flags(v: View) -> Job:
    def work(progress):
        bank = v.bank
        used, rows = _photos(v)
        progress(0.0, "Thumbnails of the photos (to confirm near-duplicates)")
        thumbs = F.thumbnails([str(v.ws.resolve(bank.img_refs[u])) for u in used])
        return F.pair_flags(bank.img[used], rows, bank.cap[v.ok], [bank.captions[i] for i in v.ok],
                            photo_thumbs=thumbs, progress=progress)
    return _run(_key(v, "flags"), work)


# ------------------------------------------------------------------------------ the pair table
def _status(v: View, ids: np.ndarray) -> np.ndarray:
    """Each pair's status: removed (not in the current anchor set), kept (a base pair) or added."""
    base, active = v.ws.base_pair_ids(), v.ws.state().active
    return np.array(["removed" if int(i) not in active else ("kept" if int(i) in base else "added")
                     for i in ids])


def _table(v: View) -> pd.DataFrame:
    """One row per shown pair (``ok``): ids, caption, status, influence on the tuning pictures,
    nearest class, flags."""
    bank, ok = v.bank, v.ok
    ids = bank.pair_ids[ok]
    state.start_influence(v.model)  # the Curate page's table, computed in the background; NaN until then
    rows, _, _ = state.influence_snapshot(v.model)
    influence = dict(zip(rows["pair_id"].tolist(), rows["loo_delta"].tolist())) if rows is not None else {}
    prompts = bank.prompts / np.linalg.norm(bank.prompts, axis=1, keepdims=True)
    nearest = np.asarray(bank.prompt_classes)[np.argmax(bank.cap[ok] @ prompts.T, axis=1)]
    df = pd.DataFrame({
        "pair_id": ids, "caption": [bank.captions[i] for i in ok], "image": [bank.pair_refs[i] for i in ok],
        "status": _status(v, ids),
        "influence": [100 * influence.get(int(i), np.nan) for i in ids],
        "nearest class": np.asarray(bank.classes)[nearest],
    })
    job = _flags(v)
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


def export_csv(sel: pd.DataFrame) -> bytes:
    """The selected rows as CSV: images relative to the data folder like the curated-pairs export
    (:func:`core.store.portable_ref`), text a spreadsheet would run as a formula guarded
    (:func:`core.data.spreadsheet_cell`)."""
    out = sel.assign(image=[portable_ref(r) for r in sel["image"]])
    for name in out.columns:
        if not pd.api.types.is_numeric_dtype(out[name]):
            out[name] = [spreadsheet_cell(x) if isinstance(x, str) else x for x in out[name]]
    return out.to_csv(index=False).encode("utf-8")


# ------------------------------------------------------------------------------ edits
def _step(ws: Workspace, direction: str, seq: int) -> None:
    """Undo / redo the edit the user saw (``seq``); a newer edit on top is refused, not undone."""
    try:
        (state.undo if direction == "undo" else state.redo)(ws, state.require_model(ws), expected_seq=seq,
                                                            where="map")
    except ValueError as error:
        st.session_state["edit_error"] = str(error)


def _edit_bar(v: View) -> None:
    metrics_header(v.model, v.ws)
    c1, c2 = st.columns(2)
    for column, label, pending in ((c1, "Undo", v.ws.peek_undo()), (c2, "Redo", v.ws.peek_redo())):
        column.button(label, icon=f":material/{label.lower()}:", disabled=pending is None, width="stretch",
                      key=f"map_{label.lower()}", on_click=_step,
                      args=(v.ws, label.lower(), None if pending is None else pending.seq))
    error = st.session_state.pop("edit_error", None)
    if error:
        st.error(plain(error))
    last = st.session_state.get("last_edit")
    if last:
        st.success(last["message"], icon=":material/check_circle:")


def _what_if(v: View, live: list[int], where: str, a, b) -> None:
    """The accuracy if the ``live`` pairs were removed, and the Remove button (one edit)."""
    try:
        what = v.model.what_if_remove(live)
        a.info(what_if_sentence(len(live), what))
    except ValueError as error:
        a.warning(plain(error))
    if b.button(f"Remove {count(len(live), 'pair')}", type="primary", icon=":material/delete:",
                width="stretch", key=state.selection_key(f"remove_{where}")):
        try:
            state.remove_pairs(v.ws, v.model, live, note=f"from Map ({where})", where="map")
            st.rerun()
        except ValueError as error:
            st.error(plain(error))


def _thumbs(v: View, sel: pd.DataFrame, where: str) -> None:
    """Thumbnails of the first ``MAX_THUMBS`` selected pairs."""
    show = sel.head(MAX_THUMBS)
    grid = pd.DataFrame({"photo": [thumbnail_url(image_path(v.ws, r), 64) for r in show["image"]],
                         "caption": show["caption"], "pair": show["pair_id"], "status": show["status"]})
    st.dataframe(grid, hide_index=True, row_height=56, height=min(420, 60 + 56 * len(grid)),
                 column_config={"photo": st.column_config.ImageColumn("photo", width="small"),
                                "caption": st.column_config.TextColumn("caption", width="large")},
                 key=f"thumbs_{where}")
    if len(sel) > MAX_THUMBS:
        st.caption(f"Showing the first {MAX_THUMBS} of {len(sel):,}; the CSV has them all.")


def act_on(v: View, chosen: list[int], df: pd.DataFrame, where: str) -> None:
    """What-if preview, Remove (one edit), CSV export and thumbnails of the pairs ``chosen``."""
    active = v.model.active_ids()
    live = [i for i in chosen if i in active]
    sel = df[df["pair_id"].isin(chosen)]
    a, b, c = st.columns([3, 1.2, 1])
    if live:
        _what_if(v, live, where, a, b)
    else:
        a.caption(f"{count(len(chosen), 'pair')} selected, none of them in the current anchor set.")
    c.download_button("Export CSV", export_csv(sel), file_name="pairs.csv",
                      mime="text/csv", icon=":material/download:", width="stretch", key=f"csv_{where}")
    _thumbs(v, sel, where)


# ------------------------------------------------------------------------------ the map
def _layout(v: View, source: str) -> np.ndarray:
    """UMAP of ``source`` when it is done, else the instant PCA of the photos (with a caption saying so)."""
    job = _umap(v, source)
    if job.done and job.result is not None:
        st.caption(f"UMAP layout of the {SOURCES[source]}.")
        return job.result
    xy = _pca(str(v.ws.path), v.bank.key, len(v.bank.pair_ids), len(v.ok), v)
    if job.error:
        st.caption(f"Instant PCA layout of the photo embeddings; UMAP could not be computed: {plain(job.error)}")
    return xy


def _mask(df: pd.DataFrame, shown_flags: list[str], text: str) -> np.ndarray:
    """The rows that carry every flag in ``shown_flags`` and whose caption contains ``text``."""
    mask = np.ones(len(df), dtype=bool)
    for name in shown_flags:
        try:
            mask &= FILTERS[name](df).to_numpy(dtype=bool)
        except KeyError:
            st.caption(f"“{name}” is still being computed; showing all pairs for it.")
    if text:
        mask &= df["caption"].str.contains(text, case=False, regex=False).to_numpy()
    return mask


def map_panel(v: View, df: pd.DataFrame) -> None:
    k1, k2, k3 = st.columns([1, 1.4, 1.4])
    source = k1.selectbox("Map of", list(SOURCES), format_func=SOURCES.get, key="map_source")
    colour = k2.selectbox("Colour by", list(COLOURS), key="map_colour")
    shown_flags = k3.multiselect("Show only", list(FILTERS), key="map_filter",
                                 placeholder="all pairs (or pick flags)")
    text = st.text_input("…whose caption contains", key="map_text", placeholder="e.g. snow, dog, red")
    xy = _layout(v, source)
    fjob = _flags(v)
    if fjob.error:
        st.caption(f"Flags unavailable: {plain(fjob.error)}")
    if _computing(v):
        _progress(v, source)
    mask = _mask(df, shown_flags, text)
    shown = df[mask]
    highlight = [int(i) for i in st.session_state.get(HIGHLIGHT, [])]
    event = st.plotly_chart(figure(shown, xy[mask], colour, highlight), on_select="rerun",
                            selection_mode=("lasso", "box"), key=state.selection_key("map_plot"), config={"displaylogo": False})
    everything = st.checkbox(f"Select all {len(shown):,} pairs shown", key=state.selection_key("map_all"),
                             disabled=len(shown) == len(df))
    chosen = shown["pair_id"].astype(int).tolist() if everything and len(shown) < len(df) else _selected(event)
    if chosen:
        act_on(v, chosen, df, "map")
    else:
        st.caption("Lasso or box-select points (toolbar above the map) to preview removing them.")


def _computing(v: View) -> bool:
    return not (_umap(v, st.session_state.get("map_source", "photos")).done and _flags(v).done)


@st.fragment(run_every=1.5)
def _progress(v: View, source: str) -> None:
    """The progress of UMAP and the flags, redrawn alone; the page reruns when both are done (the
    map itself is not in a fragment: a selection event must not point at a fragment a rerun dropped)."""
    if not _computing(v):
        st.rerun()
    job, fjob = _umap(v, source), _flags(v)
    parts = []
    if not job.done:
        parts.append(f"Instant PCA layout of the photo embeddings while UMAP of the {SOURCES[source]} "
                     f"runs: {job.message} ({100 * job.fraction:.0f}%, {time.time() - job.started:.0f} s).")
    if not fjob.done:
        parts.append(f"Computing flags: {fjob.message} ({100 * fjob.fraction:.0f}%).")
    st.caption(" ".join(parts))


# ------------------------------------------------------------------------------ search
def _search_job(v: View) -> Job:
    """The search over the current anchor set, prepared in a background job (half a minute at
    35,000 pairs, again after every edit)."""
    def work(progress):
        from core.anchor_search import AnchorSearch

        used, rows = _photos(v)
        return AnchorSearch(v.model.current_model(), v.bank.img[used], rows, v.bank.cap[v.ok]).prepare(progress)
    return _run(_key(v, "search") + (v.model.stamp,), work)


def _search(v: View) -> tuple[object | None, Job]:
    """``(search, job)``: the current anchor set's search once its job is done (older ones of this
    workspace are then dropped); meanwhile the latest finished one of this workspace (its results
    are for the anchor set before the last edits), or None."""
    job, reg = _search_job(v), _jobs()
    with reg["lock"]:
        older = [(k, j) for k, j in reg["jobs"].items()
                 if k[0] == str(v.ws.path) and k[-2] == "search" and j is not job]
        if job.done:
            for k, _ in older:
                del reg["jobs"][k]
            return job.result, job
        done = [j for _, j in older if j.done and j.result is not None]
    return (max(done, key=lambda j: j.started).result if done else None), job


@st.fragment(run_every=1.5)
def _search_progress(v: View) -> None:
    """How far the current anchor set's search is; the page reruns when it is ready."""
    job = _search_job(v)
    if job.done:
        st.rerun()
    st.caption(f":material/hourglass_top: Preparing the search for the current anchor set: {job.message} "
               f"({100 * job.fraction:.0f}%, {time.time() - job.started:.0f} s; about half a minute per "
               "35,000 pairs, again after each edit).")


@st.cache_resource(show_spinner=False)
def _text_encoder(name: str):
    from core.encoders import get_encoder

    return get_encoder(name)


def _query_vector(v: View, how: str):
    """The vector of the text typed or the picture uploaded (None while there is none)."""
    if how == "text":
        q = st.text_input("Describe what you look for", key="search_text", max_chars=300,
                          placeholder="e.g. children playing in the snow")
        return _text_encoder(v.bank.text_encoder).encode_texts([q.strip()])[0] if q.strip() else None
    up = st.file_uploader("A picture", type=["jpg", "jpeg", "png", "webp", "bmp"], key="search_pic")
    if up is None:
        return None
    try:
        return v.bank.embed_picture(up.getvalue())
    except ValueError as error:
        st.error(plain(error))
        return None


def _results_table(v: View, res: pd.DataFrame) -> list[int]:
    """The results with thumbnails; the pair ids the user checked (or all of them)."""
    event = st.dataframe(
        pd.DataFrame({"photo": [thumbnail_url(image_path(v.ws, r), 96) for r in res["image"]],
                      "caption": res["caption"], "score": res["score"], "pair": res["pair_id"],
                      "status": res["status"]}),
        hide_index=True, row_height=72, on_select="rerun", selection_mode="multi-row",
        key=state.selection_key("search_table"),
        column_config={"photo": st.column_config.ImageColumn("photo", width="small"),
                       "caption": st.column_config.TextColumn("caption", width="large"),
                       "score": st.column_config.NumberColumn(format="%.3f")})
    rows = event.selection.rows if event else []
    every = st.checkbox(f"Select all {len(res)} results", key=state.selection_key("search_all"))
    return res["pair_id"].astype(int).tolist() if every else [int(res.iloc[i]["pair_id"]) for i in rows]


def search_panel(v: View, df: pd.DataFrame) -> None:
    how = st.radio("Search by", ["text", "picture"], horizontal=True, key="search_how")
    vec = _query_vector(v, how)
    if vec is None:
        st.caption("Finds pairs by meaning: the encoder's nearest neighbours on the same side, and "
                   "ASIF retrieval across sides (through the anchors' relative representations).")
        return
    search, job = _search(v)
    if not job.done:
        _search_progress(v)
    if job.error:
        st.error(f"The search could not be prepared: {plain(job.error)}")
    if search is None:
        return
    if not job.done:
        st.caption("Meanwhile these results are for the anchor set before your last edits (each result's "
                   "status is the current one).")
    t0 = time.perf_counter()
    found = search.by_text(vec) if how == "text" else search.by_image(vec)
    ms = 1000 * (time.perf_counter() - t0)
    mode = st.radio("Results", ["encoder neighbours", "ASIF retrieval"], horizontal=True, key="search_mode")
    pos, score = found["encoder" if mode == "encoder neighbours" else "asif"]
    res = df.iloc[pos].assign(score=score)
    st.caption(f"{len(res)} pairs in {ms:.0f} ms.")
    chosen = _results_table(v, res)
    if chosen:
        act_on(v, chosen, df, "search")


# ------------------------------------------------------------------------------ the page
@st.cache_resource(show_spinner=False, max_entries=4)
def _shown(ws_path: str, key: str, n_pairs: int, n_ok: int, _bank: WorkspaceVectors) -> np.ndarray:
    """Positions of the pairs the map shows: those with vectors, sampled down to ``MAP_MAX_PAIRS``."""
    ok = np.flatnonzero(_bank.ok)
    return ok[sample_groups(_bank.pair_img[ok], MAP_MAX_PAIRS)]


def main() -> None:
    page_header("Map", "Every anchor pair on one map: pairs that look alike sit together. Lasso or box-select a "
                "region to preview the accuracy without those pairs, remove them (one undoable edit) or "
                "export them; colour and filter by influence, suspicious captions, duplicates and outliers.")
    ws = state.require_workspace()
    model = state.require_model(ws)
    bank = model.vectors
    n_ok = int(bank.ok.sum())
    v = View(ws, model, bank, _shown(str(ws.path), bank.key, len(bank.pair_ids), n_ok, bank))
    if len(v.ok) < n_ok:
        st.caption(f"The map shows a fixed random sample of whole photos: {count(len(v.ok), 'pair')} of "
                   f"{n_ok:,} (at most {MAP_MAX_PAIRS:,}); the other pages reach all.")
    _edit_bar(v)
    df = _table(v)                       # one table for both tabs (st.tabs runs both)
    tab_map, tab_search = st.tabs(["Map", "Search anchors"])
    with tab_map:
        map_panel(v, df)
    with tab_search:
        search_panel(v, df)


main()

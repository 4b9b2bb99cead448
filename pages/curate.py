"""Curate: find the anchor pairs that hurt, preview removing them, remove, undo; add pairs.

What each interaction reruns (issue #16: a preview or an edit must feel as fast as the engine):

* the page body (headline, undo / redo, charts, add pairs, auto-curate) runs only on full reruns:
  after an edit, a page visit, a workspace switch;
* :func:`influence_panel` (a fragment): the filters and the influence table; a click in the table
  reruns it, not the headline or the charts;
* :func:`selection_panel` (a fragment inside it): the pair picker, the what-if and Remove; picking a
  pair reruns only this (the table and its thumbnails are not sent again). Remove is a callback that
  edits, then reruns the page once.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import boot

boot.ensure_app()

from ui import state  # noqa: E402
from ui.charts import per_class_figure, timeline_figure  # noqa: E402
from ui.curation_panel import auto_curate_panel  # noqa: E402
from ui.safe import plain  # noqa: E402
from core.asif import DEFAULT_TEMPLATES, fill_template  # noqa: E402
from core.matching import suspicion_rank  # noqa: E402
from ui.widgets import count, metrics_header, page_header, thumbs, what_if_sentence  # noqa: E402

#: rows of the influence table sent to the browser, each with a thumbnail (search or sort for others)
TABLE_ROWS = 100
#: the grouped view measures the exact leave-photo-out change of this many photos (one what-if each)
PHOTO_ROWS = 100
#: the tables' thumbnails: small WebP data URLs (about 1 KB each, half a JPEG's size)
THUMB_PX, THUMB_FORMAT = 56, "WEBP"



# ------------------------------------------------------------------------------------- edits
def _step(ws, direction: str, seq: int) -> None:
    """Undo / redo the edit the user saw (``seq``); a newer edit on top is refused, not undone."""
    try:
        model = state.require_model(ws)
        (state.undo if direction == "undo" else state.redo)(ws, model, expected_seq=seq, where="curate")
    except ValueError as error:
        st.session_state["edit_error"] = str(error)


def _remove(ws, pair_ids: list[int]) -> None:
    """Remove button's callback: one edit, then one full rerun (headline, sidebar, table, charts)."""
    try:
        state.remove_pairs(ws, state.require_model(ws), pair_ids, note="from Curate", where="curate")
    except ValueError as error:
        st.session_state["curate_remove_error"] = str(error)
        return
    st.rerun()


def _history_buttons(ws) -> None:
    """Undo / Redo, each naming the edit it acts on (bound when drawn, so a stale view is told)."""
    c1, c2 = st.columns(2)
    for column, label, pending in ((c1, "Undo", ws.peek_undo()), (c2, "Redo", ws.peek_redo())):
        column.button(label, icon=f":material/{label.lower()}:", disabled=pending is None, width="stretch",
                      key=f"curate_{label}", on_click=_step,
                      args=(ws, label.lower(), None if pending is None else pending.seq))
        column.caption("Nothing to " + label.lower() if pending is None
                       else f"{label}: {pending.describe()}")
    error = st.session_state.pop("edit_error", None)
    if error:
        st.error(plain(error))


def header(model) -> None:
    """Headline numbers, undo / redo and the last edit's message."""
    metrics_header(model, model.ws)
    _history_buttons(model.ws)
    last = st.session_state.get("last_edit")
    if last:
        st.success(last["message"], icon=":material/check_circle:")


# ----------------------------------------------------------------------------- influence rows
@st.cache_resource(show_spinner="Comparing each pair's photo neighbourhood with its caption's "
                   "(about a minute for 35,000 pairs)…", max_entries=8)
def _suspicion(ws_path: str, key: str, n_pairs: int, _bank) -> dict:
    """{pair_id: score} from the label-free detector :func:`core.matching.suspicious_pair_scores`."""
    from core.matching import suspicious_pair_scores

    b = _bank
    scores = suspicious_pair_scores(b.img[b.pair_img], b.cap, groups=b.pair_img)
    return {int(i): float(s) for i, s in zip(b.pair_ids, scores)}


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The influence rows as a DataFrame, built once per computed table (35,000 rows: ~0.1 s)."""
    memo = st.session_state.get("curate_frame")
    if memo is None or memo[0] is not rows:
        memo = (rows, pd.DataFrame(rows))
        st.session_state["curate_frame"] = memo
    return memo[1]


def _with_suspicion(model, df: pd.DataFrame) -> pd.DataFrame:
    if not st.session_state.get("suspicion_on"):
        return df
    try:
        scores = _suspicion(str(model.ws.path), model.key, len(model.vectors.pair_ids), model.vectors)
    except ValueError as error:  # e.g. too few pairs to compare neighbourhoods
        st.caption(f"Suspicious-pair scores unavailable: {plain(error)}")
        return df
    df = df.assign(suspicious=df["pair_id"].map(scores))
    return df.assign(suspicion_rank=suspicion_rank(df["suspicious"].to_numpy()))


def influence_rows(model) -> pd.DataFrame | None:
    """The influence table of the live model (rows of removed pairs dropped while it is refreshed
    after an edit); ``None`` while it is first computed."""
    rows, version, _ = state.influence_snapshot(model)
    if rows is None:
        st.info("Measuring each pair's influence (exact leave-one-out on the tuning pictures)… "
                "the table appears here in a few seconds.", icon=":material/hourglass_top:")
        return None
    df = _frame(rows)
    if version != model.version:
        st.caption(":material/hourglass_top: Updating the influence numbers after your edit…")
        df = df[df["pair_id"].isin(list(model.active_ids()))]
    return _with_suspicion(model, df)


def _filtered(df: pd.DataFrame) -> tuple[pd.DataFrame, str, bool]:
    """The search, sort and grouping controls applied: ``(rows, sort, grouped by photo)``."""
    f1, f2, f3 = st.columns([2, 1, 1])
    search = f1.text_input("Find pairs whose caption contains", key="curate_search",
                           placeholder="e.g. dog, skateboard, water")
    sort = f2.selectbox("Sort by", ["most harmful", "most helpful", "most used"]
                        + (["most suspicious caption"] if "suspicious" in df else []), key="curate_sort")
    by_photo = f3.toggle("Group captions by photo", key="curate_by_photo",
                         help="One row per photo with all its captions: the exact accuracy change if "
                              "the photo (all its captions) were removed; select it to act on all of them.")
    if search:
        df = df[df["caption"].str.contains(search, case=False, regex=False, na=False)]
    if sort == "most helpful":
        df = df.sort_values(["loo_delta", "supported_correct"], ascending=[True, False])
    elif sort == "most used":
        df = df.sort_values("participated", ascending=False)
    elif sort == "most suspicious caption":
        df = df.sort_values("suspicious", ascending=False)
    return df, sort, by_photo


# ----------------------------------------------------------------------------- pair table
def _take_sent() -> list[int]:
    """Pairs another page sent here (Align's suspicious pairs): they become this page's selection."""
    sent = st.session_state.pop("curate_sent", None)
    if not sent:
        return []
    ids = [int(i) for i in sent["ids"]]
    st.session_state[state.selection_key("curate_ids")] = ids
    st.session_state["curate_by_photo"] = False
    st.session_state["curate_sent_note"] = f"{count(len(ids), 'pair')} from {sent['from']} selected below."
    return ids


def _pair_config(with_suspicion: bool) -> dict:
    config = {
        "photo": st.column_config.ImageColumn("photo", width="small"),
        "caption": st.column_config.TextColumn("caption", width="large"),
        "Δ tuning accuracy if removed": st.column_config.NumberColumn(
            format="%+.2f pts", help="Exact change of the TUNING accuracy if this pair alone were "
                                     "removed (positive: removing it helps). Test pictures are never read."),
        "used in": st.column_config.NumberColumn(help="Tuning predictions it took part in"),
        "correct": st.column_config.NumberColumn(help="Correct predictions it supported"),
        "wrong": st.column_config.NumberColumn(help="Wrong predictions it supported"),
    }
    if with_suspicion:
        config["suspicious"] = st.column_config.ProgressColumn(
            "suspicious caption", min_value=0.0, max_value=1.0, format="%.3f",
            help="Label-free: the share of other captions and photos that fit better than this pair's "
                 "own partner (Align lab). High = the caption may not describe the photo.")
        config["suspicion rank"] = st.column_config.TextColumn(
            help="Rank of the suspicious-caption score among all pairs (1 = most suspicious; ties share "
                 "a rank).")
    return config


def _pair_view(ws, df: pd.DataFrame, n_all: int) -> pd.DataFrame:
    """The table's rows as shown (thumbnails included), kept while the same rows are shown: a rerun
    that changes nothing in them rebuilds nothing."""
    key = (tuple(df["pair_id"]), tuple(df["loo_delta"]), "suspicious" in df, n_all)
    memo = st.session_state.get("curate_view")
    if memo is not None and memo[0] == key:
        return memo[1]
    view = pd.DataFrame({
        "photo": thumbs(ws, df["image"], THUMB_PX, THUMB_FORMAT),
        "caption": df["caption"].to_numpy(),
        "Δ tuning accuracy if removed": 100 * df["loo_delta"].to_numpy(),
        "used in": df["participated"].to_numpy(),
        "correct": df["supported_correct"].to_numpy(),
        "wrong": df["supported_wrong"].to_numpy(),
        "pair": df["pair_id"].to_numpy(),
    })
    if "suspicious" in df:
        view["suspicious"] = df["suspicious"].to_numpy()
        view["suspicion rank"] = [f"{r:,} of {n_all:,}" for r in df["suspicion_rank"]]
    st.session_state["curate_view"] = (key, view)
    return view


def pair_table(ws, df: pd.DataFrame, n_all: int) -> list[int]:
    """One row per pair (the first :data:`TABLE_ROWS` of ``df``; ranks are out of ``n_all``);
    returns the pair ids of the clicked rows."""
    if len(df) > TABLE_ROWS:
        st.caption(f"The first {TABLE_ROWS:,} of {len(df):,} pairs in this order; search or sort to see "
                   "others.")
    df = df.head(TABLE_ROWS)
    event = st.dataframe(_pair_view(ws, df, n_all), column_config=_pair_config("suspicious" in df),
                         hide_index=True, height=420, on_select="rerun", selection_mode="multi-row",
                         key=state.selection_key("influence_table"), row_height=56)
    ids = df["pair_id"].to_numpy()
    return [int(ids[i]) for i in event.selection.rows] if event else []


# ----------------------------------------------------------------------------- photo table
def _photo_deltas(model, df: pd.DataFrame) -> pd.DataFrame:
    """The first :data:`PHOTO_ROWS` photos of ``df`` (in the order of their best row) with the exact
    change if all their listed captions were removed (one what-if each, kept per model version)."""
    order = list(dict.fromkeys(df["image"]))[:PHOTO_ROWS]
    df = df[df["image"].isin(order)]
    cache = st.session_state.setdefault("curate_photo_delta", {})
    if cache.get("version") != model.stamp:
        cache.clear()
        cache["version"] = model.stamp
    rows = []
    for ref, g in df.groupby("image", sort=False):
        ids = tuple(sorted(int(i) for i in g["pair_id"]))
        if ids not in cache:
            try:
                w = model.what_if_remove(ids)
                cache[ids] = w.after.tune - w.before.tune
            except ValueError:  # e.g. fewer pairs than k would be left: no number, not a crash
                cache[ids] = float("nan")
        rows.append({"ref": ref, "exact": cache[ids], "summed": g["loo_delta"].sum(), "n": len(g),
                     "captions": " · ".join(g["caption"])})
    columns = ["ref", "exact", "summed", "n", "captions"]
    return pd.DataFrame(rows, columns=columns).set_index("ref").loc[order].reset_index()


PHOTO_DELTA = "Δ tuning accuracy if the photo is removed"


def _photo_config() -> dict:
    return {
        "photo": st.column_config.ImageColumn("photo", width="small"),
        "captions": st.column_config.TextColumn("captions", width="large"),
        PHOTO_DELTA: st.column_config.NumberColumn(
            format="%+.2f pts", help="Exact: the tuning accuracy after removing all the photo's captions "
                                     "listed here at once (one what-if), minus today's."),
        "sum of its captions' single Δ": st.column_config.NumberColumn(
            format="%+.2f pts", help="For comparison: the single-pair changes added up (captions of one "
                                     "photo vote together, so this is not the photo's effect)."),
        "captions listed": st.column_config.NumberColumn(help="Captions of this photo in the table "
                                                              "(after the caption search)"),
    }


def _photo_captions(df: pd.DataFrame, ref: str, label: str) -> list[int]:
    """One selected photo's captions; returns the pair ids to act on (the picked ones, else all)."""
    g = df[df["image"] == ref]
    caption_of = dict(zip(g["pair_id"].astype(int), g["caption"]))
    with st.expander(f"Captions of photo {plain(label)}", expanded=True):
        cap = st.multiselect("Act on these captions only (empty: all of them)", options=list(caption_of),
                             default=None, key=state.selection_key(f"curate_photo_caps_{ref}"),
                             format_func=lambda i: f"#{i}: {caption_of[i]}")
        st.dataframe(pd.DataFrame({"pair": g["pair_id"], "caption": g["caption"],
                                   "Δ if this caption alone is removed": 100 * g["loo_delta"]}),
                     column_config={"Δ if this caption alone is removed": st.column_config.NumberColumn(
                         format="%+.2f pts")}, hide_index=True)
    return cap or list(caption_of)


def photo_table(model, df: pd.DataFrame, sort: str) -> list[int]:
    """One row per photo (its captions together); returns the pair ids of the selected photos'
    captions, or of the captions picked inside them."""
    photos = _photo_deltas(model, df)
    if sort in ("most harmful", "most helpful"):
        photos = photos.sort_values("exact", ascending=sort == "most helpful", kind="stable").reset_index(drop=True)
    view = pd.DataFrame({"photo": thumbs(model.ws, photos["ref"], THUMB_PX, THUMB_FORMAT),
                         "captions": photos["captions"],
                         PHOTO_DELTA: 100 * photos["exact"], "sum of its captions' single Δ": 100 * photos["summed"],
                         "captions listed": photos["n"]})
    st.caption(f"The {len(photos):,} photos with the highest-ranked captions; the Δ column is exact for "
               "each photo (a what-if removing all its listed captions together).")
    event = st.dataframe(view, column_config=_photo_config(), hide_index=True, height=420,
                         on_select="rerun", selection_mode="multi-row",
                         key=state.selection_key("photo_table"), row_height=56)
    picked = [photos.loc[i, "ref"] for i in event.selection.rows] if event else []
    labels = {r: f"{i + 1}. {r.rsplit('/', 1)[-1]}" for i, r in enumerate(photos["ref"])}
    extra = st.multiselect("Selected photos (click rows above, or pick by number)", options=list(photos["ref"]),
                           default=None, key=state.selection_key("curate_photos"),
                           format_func=lambda r: labels.get(r, r))
    chosen: list[int] = []
    for ref in dict.fromkeys(picked + extra):
        chosen += _photo_captions(df, ref, labels[ref])
    return sorted(set(chosen))


# ----------------------------------------------------------------------------- selection
def _what_if(model, chosen: list[int]) -> None:
    try:
        what = model.what_if_remove(chosen)
    except ValueError as error:
        st.warning(plain(error))
        return
    st.info(what_if_sentence(len(chosen), what))


@st.fragment
def selection_panel(ws, picked: list[int], options: list[int] | None) -> None:
    """The selection (``picked`` in the table, plus the pairs chosen in the picker when ``options``
    is given), its what-if and the Remove button. Picking a pair reruns only this fragment."""
    chosen = list(picked)
    if options is not None:
        note = st.session_state.pop("curate_sent_note", None)
        if note:
            st.info(note, icon=":material/send:")
        extra = st.multiselect("Selected pairs (click rows above, or pick by number)", options=options,
                               default=None, key=state.selection_key("curate_ids"), format_func=lambda i: f"#{i}")
        chosen = sorted(set(picked) | set(extra))
    error = st.session_state.pop("curate_remove_error", None)
    if error:
        st.error(plain(error))
    c1, c2 = st.columns([2, 1])
    if not chosen:
        c1.caption("Select one or more rows to preview the accuracy without them.")
        return
    with c1:
        _what_if(state.require_model(ws), chosen)
    c2.button(f"Remove {count(len(chosen), 'pair')}", type="primary", icon=":material/delete:", width="stretch",
              key=state.selection_key("remove_selected"), on_click=_remove, args=(ws, chosen))


def _suspicion_on() -> None:
    st.session_state["suspicion_on"] = True


@st.fragment
def influence_panel(ws) -> None:
    """The influence table with its filters, and the selection panel under it."""
    st.subheader("Anchor pairs, most harmful first")
    model = state.require_model(ws)
    df = influence_rows(model)
    if df is None:
        return
    if df.empty:
        st.info("No anchor pair takes part in any prediction.")
        return
    n_all = len(df)
    sent = _take_sent()
    df, sort, by_photo = _filtered(df)
    if by_photo:
        selection_panel(ws, photo_table(model, df, sort), None)
    else:
        picked = pair_table(ws, df, n_all)
        key = state.selection_key("curate_ids")
        options = list(dict.fromkeys(df["pair_id"].head(TABLE_ROWS).astype(int).tolist() + sent
                                     + [int(i) for i in st.session_state.get(key, [])]))
        selection_panel(ws, picked, options)
    if not st.session_state.get("suspicion_on"):
        st.button("Also score captions that may not match their photo (label-free)", icon=":material/flag:",
                  on_click=_suspicion_on)


@st.fragment(run_every=1.5)
def wait_for_influence(ws) -> None:
    """While the influence table is computed in the background: rerun the page when it is ready
    (this fragment holds no widget, so a selection in the panel is never lost to it)."""
    live = state.require_model(ws)
    if state.influence_snapshot(live)[1] == live.version:
        st.rerun()


def charts(model) -> None:
    """Accuracy per class and over the edit history (full reruns only: their numbers change only
    with an edit)."""
    g1, g2 = st.columns(2)
    with g1:
        st.subheader("Accuracy per class")
        st.plotly_chart(per_class_figure(model.vectors.classes, model.metrics()), width="stretch")
    with g2:
        st.subheader("Accuracy over the edit history")
        hist = model.ws.history(model.key)
        if len(hist) <= 1:
            st.caption("Each edit you make adds a point here.")
        else:
            st.plotly_chart(timeline_figure(hist), width="stretch")


# ----------------------------------------------------------------------------- add pairs
def _add(model, pairs, note: str, spinner: str) -> None:
    try:
        with st.spinner(spinner):
            state.add_pairs(model.ws, model, pairs, note=note, where="add")
        st.rerun()  # the headline, charts and message above show the new model
    except ValueError as error:
        st.error(plain(error))


def _stored_uploads(ws, files) -> list[tuple[str, str]]:
    """Uploaded photos stored in the workspace (unreadable ones named and skipped), as image refs."""
    from core.encoders import load_image

    good, bad = [], []
    for f in files or []:
        data = f.getvalue()
        try:
            load_image(data)
        except ValueError:
            bad.append(f"{f.name}: not a readable image, or over the pixel limit")
            continue
        suffix = "." + f.name.rsplit(".", 1)[-1] if "." in f.name else ".jpg"
        good.append(ws.store_file(data, suffix))
    for msg in bad:
        st.warning(f"Skipped {plain(msg)}")
    return good


def add_uploads(model) -> None:
    with st.form("add_upload", clear_on_submit=True):
        files = st.file_uploader("Photos", type=["jpg", "jpeg", "png", "webp", "bmp"],
                                 accept_multiple_files=True)
        a, b = st.columns(2)
        template = a.text_input("Caption template", "a photo of a {}.")
        cls = b.selectbox("Class name for {}", model.vectors.classes)
        if st.form_submit_button("Add these pairs", icon=":material/add:"):
            refs = _stored_uploads(model.ws, files)
            if not refs:
                st.error("No readable photo to add.")
            else:
                _add(model, [(r, fill_template(template, cls)) for r in refs], "uploaded",
                     "Embedding the new photos…")


def _indomain_pairs(ws, train, classes, per_class: int) -> list[tuple[str, str]]:
    """The first ``per_class`` CIFAR-10 training pictures of each class not yet in the workspace."""
    known = {p.image for p in ws.all_pairs()}
    pairs = []
    for c in classes:
        folder = train / c
        if folder.is_dir():
            refs = [f"demo:cifar10/train/{c}/{f.name}" for f in sorted(folder.iterdir())]
            pairs += [(r, fill_template(DEFAULT_TEMPLATES[0], c)) for r in [r for r in refs if r not in known][:per_class]]
    return pairs


def add_indomain(model) -> None:
    from core.data import demo_data_root

    try:
        train = demo_data_root() / "cifar10" / "train"
    except ValueError:
        train = None
    if train is None or not train.is_dir():
        st.caption("The CIFAR-10 training images are not in the demo data folder.")
        return
    a, b = st.columns(2)
    per_class = a.number_input("Photos per class", 1, 50, 10, key="indomain_n")
    which = b.multiselect("Classes", model.vectors.classes, default=model.vectors.classes, key="indomain_cls")
    if st.button("Add in-domain pairs", icon=":material/add:"):
        pairs = _indomain_pairs(model.ws, train, which, int(per_class))
        if not pairs:
            st.warning("Nothing new to add for these classes.")
        else:
            _add(model, pairs, "in-domain CIFAR-10 train", f"Embedding {len(pairs)} photos…")


def add_pairs_section(model) -> None:
    st.subheader("Add pairs")
    st.caption("ASIF adjusts in seconds: new pairs join the anchors without any training. Add photos "
               "with a caption, e.g. in-domain examples of a class that is often confused.")
    tab_up, tab_demo = st.tabs(["Upload photos", "In-domain examples (CIFAR-10 train)"])
    with tab_up:
        add_uploads(model)
    with tab_demo:
        add_indomain(model)


def main() -> None:
    page_header("Curate", "Every anchor pair votes in the predictions. This page ranks them by how much the "
                "accuracy would change if each one alone were removed — most harmful first. Select pairs, "
                "preview the effect, remove them; undo any time. Edits are saved as you make them.")
    ws = state.require_workspace()
    model = state.require_model(ws)
    header(model)
    influence_panel(ws)
    charts(model)
    st.divider()
    add_pairs_section(model)
    st.divider()
    auto_curate_panel(ws, model)
    # the influence of a new anchor set is computed in the background once the page is drawn
    # (started earlier, its seconds of work compete with drawing the page after an edit)
    state.start_influence(model)
    if state.influence_snapshot(model)[1] != model.version:
        wait_for_influence(ws)


main()

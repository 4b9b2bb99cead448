"""Curate: find the anchor pairs that hurt, preview removing them, remove, undo; add pairs."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import boot

boot.ensure_app()

from ui import state
from ui.charts import per_class_figure, timeline_figure
from ui.curation_panel import auto_curate_panel
from ui.safe import plain
from core.matching import suspicion_rank
from ui.widgets import image_path, metrics_header, pct, thumbnail_url

st.title("Curate")
st.caption("Every anchor pair votes in the predictions. This page ranks them by how much the accuracy "
           "would change if each one alone were removed — most harmful first. Select pairs, preview "
           "the effect, remove them; undo any time. Edits are saved as you make them.")

ws = state.require_workspace()
state.require_model(ws)


def _fmt_pts(x: float) -> str:
    return f"{100 * x:+.1f} pts"


@st.cache_resource(show_spinner="Comparing each pair's photo neighbourhood with its caption's "
                   "(about a minute for 35,000 pairs)…", max_entries=8)
def _suspicion(ws_path: str, key: str, n_pairs: int, _bank) -> dict:
    """{pair_id: score} from the label-free detector :func:`core.matching.suspicious_pair_scores`."""
    from core.matching import suspicious_pair_scores

    b = _bank
    scores = suspicious_pair_scores(b.img[b.pair_img], b.cap, groups=b.pair_img)
    return {int(i): float(s) for i, s in zip(b.pair_ids, scores)}


def _step(direction: str, seq: int) -> None:
    """Undo / redo the edit the user saw (``seq``); a newer edit on top is refused, not undone."""
    try:
        model = state.require_model(ws)
        (state.undo if direction == "undo" else state.redo)(ws, model, expected_seq=seq, where="curate")
    except ValueError as error:
        st.session_state["edit_error"] = str(error)


def _history_buttons() -> None:
    """Undo / Redo, each naming the edit it acts on (bound when drawn, so a stale view is told)."""
    c1, c2 = st.columns(2)
    for column, label, pending in ((c1, "Undo", ws.peek_undo()), (c2, "Redo", ws.peek_redo())):
        column.button(label, icon=f":material/{label.lower()}:", disabled=pending is None, width="stretch",
                      key=f"curate_{label}", on_click=_step,
                      args=(label.lower(), None if pending is None else pending.seq))
        column.caption("Nothing to " + label.lower() if pending is None
                       else f"{label}: {pending.describe()}")
    error = st.session_state.pop("edit_error", None)
    if error:
        st.error(plain(error))


def _take_sent() -> list[int]:
    """Pairs another page sent here (Align's suspicious pairs): they become this page's selection."""
    sent = st.session_state.pop("curate_sent", None)
    if not sent:
        return []
    ids = [int(i) for i in sent["ids"]]
    st.session_state[state.selection_key("curate_ids")] = ids
    st.session_state["curate_by_photo"] = False
    st.session_state["curate_sent_note"] = (f"{len(ids)} pair{'s' if len(ids) != 1 else ''} from "
                                            f"{sent['from']} selected below.")
    return ids


def _suspicion_columns(df: pd.DataFrame, view: pd.DataFrame, config: dict, n_all: int) -> None:
    if "suspicious" not in df:
        return
    view["suspicious"] = df["suspicious"].to_numpy()
    view["suspicion rank"] = [f"{r:,} of {n_all:,}" for r in df["suspicion_rank"]]
    config["suspicious"] = st.column_config.ProgressColumn(
        "suspicious caption", min_value=0.0, max_value=1.0, format="%.3f",
        help="Label-free: the share of other captions and photos that fit better than this pair's own "
             "partner (Align lab). High = the caption may not describe the photo.")
    config["suspicion rank"] = st.column_config.TextColumn(
        help="Rank of the suspicious-caption score among all pairs (1 = most suspicious; ties share a rank).")


def _pair_table(df: pd.DataFrame, n_all: int, sent: list[int]) -> list[int]:
    """One row per pair; returns the selected pair ids."""
    df = df.head(200).reset_index(drop=True)
    view = pd.DataFrame({
        "photo": [thumbnail_url(image_path(ws, r), 64) for r in df["image"]],
        "caption": df["caption"],
        "Δ tuning accuracy if removed": 100 * df["loo_delta"],
        "used in": df["participated"],
        "correct": df["supported_correct"],
        "wrong": df["supported_wrong"],
        "pair": df["pair_id"],
    })
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
    _suspicion_columns(df, view, config, n_all)
    event = st.dataframe(view, column_config=config, hide_index=True, height=420,
                         on_select="rerun", selection_mode="multi-row",
                         key=state.selection_key("influence_table"),
                         row_height=56)
    picked = [int(df.loc[i, "pair_id"]) for i in event.selection.rows] if event else []
    key = state.selection_key("curate_ids")
    options = list(dict.fromkeys(df["pair_id"].astype(int).tolist() + sent
                                 + [int(i) for i in st.session_state.get(key, [])]))
    note = st.session_state.pop("curate_sent_note", None)
    if note:
        st.info(note, icon=":material/send:")
    extra = st.multiselect("Selected pairs (click rows above, or pick by number)", options=options,
                           default=None, key=key, format_func=lambda i: f"#{i}")
    return sorted(set(picked) | set(extra))


#: the grouped view measures the exact leave-photo-out change of this many photos (one what-if each)
PHOTO_ROWS = 100


def _photo_table(model, df: pd.DataFrame, sort: str, n_all: int) -> list[int]:
    """One row per photo (its captions together); returns the pair ids of the selected photos'
    captions, or of the captions picked inside them."""
    order = list(dict.fromkeys(df["image"]))[:PHOTO_ROWS]  # photos in the order of their best row
    groups = {ref: g for ref, g in df.groupby("image", sort=False) if ref in set(order)}
    cache = st.session_state.setdefault("curate_photo_delta", {})
    if cache.get("version") != (model.key, model.version):
        cache.clear()
        cache["version"] = (model.key, model.version)
    exact = []
    for ref in order:
        ids = tuple(sorted(int(i) for i in groups[ref]["pair_id"]))
        if ids not in cache:
            w = model.what_if_remove(ids)
            cache[ids] = w.after.tune - w.before.tune
        exact.append(cache[ids])
    photos = pd.DataFrame({"ref": order, "exact": exact,
                           "summed": [groups[r]["loo_delta"].sum() for r in order],
                           "n": [len(groups[r]) for r in order]})
    if sort in ("most harmful", "most helpful"):
        photos = photos.sort_values("exact", ascending=sort == "most helpful", kind="stable")
    photos = photos.reset_index(drop=True)
    view = pd.DataFrame({
        "photo": [thumbnail_url(image_path(ws, r), 64) for r in photos["ref"]],
        "captions": [" · ".join(groups[r]["caption"]) for r in photos["ref"]],
        "Δ tuning accuracy if the photo is removed": 100 * photos["exact"],
        "sum of its captions' single Δ": 100 * photos["summed"],
        "captions listed": photos["n"],
    })
    config = {
        "photo": st.column_config.ImageColumn("photo", width="small"),
        "captions": st.column_config.TextColumn("captions", width="large"),
        "Δ tuning accuracy if the photo is removed": st.column_config.NumberColumn(
            format="%+.2f pts", help="Exact: the tuning accuracy after removing all the photo's captions "
                                     "listed here at once (one what-if), minus today's."),
        "sum of its captions' single Δ": st.column_config.NumberColumn(
            format="%+.2f pts", help="For comparison: the single-pair changes added up (captions of one "
                                     "photo vote together, so this is not the photo's effect)."),
        "captions listed": st.column_config.NumberColumn(help="Captions of this photo in the table "
                                                              "(after the caption search)"),
    }
    st.caption(f"The {len(photos):,} photos with the highest-ranked captions; the Δ column is exact for "
               "each photo (a what-if removing all its listed captions together).")
    event = st.dataframe(view, column_config=config, hide_index=True, height=420,
                         on_select="rerun", selection_mode="multi-row",
                         key=state.selection_key("photo_table"), row_height=56)
    picked = [photos.loc[i, "ref"] for i in event.selection.rows] if event else []
    labels = {r: f"{i + 1}. {r.rsplit('/', 1)[-1]}" for i, r in enumerate(photos["ref"])}
    extra = st.multiselect("Selected photos (click rows above, or pick by number)", options=list(photos["ref"]),
                           default=None, key=state.selection_key("curate_photos"),
                           format_func=lambda r: labels.get(r, r))
    chosen: list[int] = []
    for ref in dict.fromkeys(picked + extra):
        g = groups[ref]
        with st.expander(f"Captions of photo {plain(labels[ref])}", expanded=True):
            cap = st.multiselect("Act on these captions only (empty: all of them)",
                                 options=g["pair_id"].astype(int).tolist(), default=None,
                                 key=state.selection_key(f"curate_photo_caps_{ref}"),
                                 format_func=lambda i, g=g: f"#{i}: " + str(g.set_index("pair_id").loc[i, "caption"]))
            st.dataframe(pd.DataFrame({"pair": g["pair_id"], "caption": g["caption"],
                                       "Δ if this caption alone is removed": 100 * g["loo_delta"]}),
                         column_config={"Δ if this caption alone is removed": st.column_config.NumberColumn(
                             format="%+.2f pts")}, hide_index=True)
            chosen += cap or g["pair_id"].astype(int).tolist()
    return sorted(set(chosen))


def curate_panel():
    model = state.require_model(ws)
    metrics_header(model, ws)
    _history_buttons()
    last = st.session_state.get("last_edit")
    if last:
        st.success(last["message"], icon=":material/check_circle:")

    # ---------------------------------------------------------------- influence table
    st.subheader("Anchor pairs, most harmful first")
    state.start_influence(model)
    rows, version, running = state.influence_snapshot(model)
    if rows is None:
        st.info("Measuring each pair's influence (exact leave-one-out on the tuning pictures)… "
                "the table appears here in a few seconds.", icon=":material/hourglass_top:")
        return
    if version != model.version:
        st.caption(":material/hourglass_top: Updating the influence numbers after your edit…")
        alive = model.active_ids()
        rows = [r for r in rows if r["pair_id"] in alive]
    df = pd.DataFrame(rows)
    if df.empty:
        st.info("No anchor pair takes part in any prediction.")
        return
    if st.session_state.get("suspicion_on"):
        try:
            scores = _suspicion(str(ws.path), model.key, len(model.vectors.pair_ids), model.vectors)
            df["suspicious"] = df["pair_id"].map(scores)
            df["suspicion_rank"] = suspicion_rank(df["suspicious"].to_numpy())
        except ValueError as error:  # e.g. too few pairs to compare neighbourhoods
            st.caption(f"Suspicious-pair scores unavailable: {plain(error)}")
    n_all = len(df)
    sent = _take_sent()
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
    elif sort == "most suspicious caption" and "suspicious" in df:
        df = df.sort_values("suspicious", ascending=False)
    if by_photo:
        chosen = _photo_table(model, df, sort, n_all)
    else:
        chosen = _pair_table(df, n_all, sent)
    c1, c2 = st.columns([2, 1])
    if chosen:
        n = len(chosen)
        try:
            what = model.what_if_remove(chosen)
            c1.info(f"What if {'this pair were' if n == 1 else f'these {n} pairs were'} removed: tuning "
                    f"{pct(what.before.tune)} → {pct(what.after.tune)} ({_fmt_pts(what.after.tune - what.before.tune)}); "
                    f"test {pct(what.before.test)} → {pct(what.after.test)}. {what.n_changed:,} prediction"
                    f"{'s' if what.n_changed != 1 else ''} would change.")
        except ValueError as error:
            c1.warning(plain(error))
        if c2.button(f"Remove {n} pair{'s' if n != 1 else ''}", type="primary", icon=":material/delete:",
                     width="stretch", key=state.selection_key("remove_selected")):
            try:
                state.remove_pairs(ws, model, chosen, note="from Curate", where="curate")
                st.rerun()  # only on success: a rerun would wipe the message below
            except ValueError as error:
                st.error(plain(error))
    else:
        c1.caption("Select one or more rows to preview the accuracy without them.")
    if not st.session_state.get("suspicion_on"):
        if st.button("Also score captions that may not match their photo (label-free)",
                     icon=":material/flag:"):
            st.session_state["suspicion_on"] = True
            st.rerun()

    # ---------------------------------------------------------------- per class + timeline
    g1, g2 = st.columns(2)
    with g1:
        st.subheader("Accuracy per class")
        st.plotly_chart(per_class_figure(model.vectors.classes, model.metrics()), width="stretch")
    with g2:
        st.subheader("Accuracy over the edit history")
        hist = ws.history(model.key)
        if len(hist) <= 1:
            st.caption("Each edit you make adds a point here.")
        else:
            st.plotly_chart(timeline_figure(hist), width="stretch")


@st.fragment
def panel():
    curate_panel()


@st.fragment(run_every=1.5)
def wait_for_influence():
    """While the influence table is computed in the background: rerun the page when it is ready
    (this fragment holds no widget, so a selection in the panel is never lost to it)."""
    live = state.require_model(ws)
    if state.influence_snapshot(live)[1] == live.version:
        st.rerun()


_live = state.require_model(ws)
state.start_influence(_live)
panel()
if state.influence_snapshot(_live)[1] != _live.version:
    wait_for_influence()

# -------------------------------------------------------------------- add pairs
st.divider()
st.subheader("Add pairs")
st.caption("ASIF adjusts in seconds: new pairs join the anchors without any training. Add photos "
           "with a caption, e.g. in-domain examples of a class that is often confused.")
tab_up, tab_demo = st.tabs(["Upload photos", "In-domain examples (CIFAR-10 train)"])
model = state.require_model(ws)
with tab_up:
    with st.form("add_upload", clear_on_submit=True):
        files = st.file_uploader("Photos", type=["jpg", "jpeg", "png", "webp", "bmp"],
                                 accept_multiple_files=True)
        a, b = st.columns(2)
        template = a.text_input("Caption template", "a photo of a {}.")
        cls = b.selectbox("Class name for {}", model.vectors.classes)
        if st.form_submit_button("Add these pairs", icon=":material/add:"):
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
                good.append((ws.store_file(data, suffix), template.replace("{}", cls)))
            for msg in bad:
                st.warning(f"Skipped {plain(msg)}")
            if not good:
                st.error("No readable photo to add.")
            else:
                try:
                    with st.spinner("Embedding the new photos…"):
                        state.add_pairs(ws, model, good, note="uploaded", where="add")
                    st.rerun()  # the headline, charts and message above show the new model
                except ValueError as error:
                    st.error(plain(error))
with tab_demo:
    from core.data import demo_data_root

    try:
        train = demo_data_root() / "cifar10" / "train"
    except ValueError:
        train = None
    if train is None or not train.is_dir():
        st.caption("The CIFAR-10 training images are not in the demo data folder.")
    else:
        a, b = st.columns(2)
        per_class = a.number_input("Photos per class", 1, 50, 10, key="indomain_n")
        which = b.multiselect("Classes", model.vectors.classes, default=model.vectors.classes,
                              key="indomain_cls")
        if st.button("Add in-domain pairs", icon=":material/add:"):
            pairs = []
            known = {p.image for p in ws.all_pairs()}
            for c in which:
                folder = train / c
                if not folder.is_dir():
                    continue
                files = sorted(folder.iterdir())
                refs = [f"demo:cifar10/train/{c}/{f.name}" for f in files]
                refs = [r for r in refs if r not in known][: int(per_class)]
                pairs += [(r, f"a photo of a {c}.") for r in refs]
            if not pairs:
                st.warning("Nothing new to add for these classes.")
            else:
                try:
                    with st.spinner(f"Embedding {len(pairs)} photos…"):
                        state.add_pairs(ws, model, pairs, note="in-domain CIFAR-10 train", where="add")
                    st.rerun()  # the headline, charts and message above show the new model
                except ValueError as error:
                    st.error(plain(error))

# -------------------------------------------------------------------- automatic curation
st.divider()
auto_curate_panel(ws, model)

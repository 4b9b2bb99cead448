"""Align (lab): how similarly do the image and text encoders see the world, and can pairs be matched
without training? Linear/RBF CKA, the shuffle curve, matching/retrieval with baselines, and the
label-free suspicious pairs. All computation is in ``core.cka`` / ``core.matching``.

The page is one entry call, :func:`main`: choose the pairs, then three sections. Matching and
suspicious pairs are fragments: their inputs and buttons rerun only their own panel.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import boot

boot.ensure_app()

from core import cka, matching  # noqa: E402
from core.arrays import sample_groups  # noqa: E402
from core.embedded import first_pair_per_image  # noqa: E402
from ui import state  # noqa: E402
from ui.safe import plain  # noqa: E402
from ui.widgets import count, page_header, thumbnail_url  # noqa: E402

SOURCE_WS = "This workspace's anchor pairs"
SOURCE_DEMO = "Flickr8k demo pairs (pick encoders)"
METHOD_NAMES = {"qap": "QAP (seeded)", "local_cka": "Local CKA", "linear": "Linear map",
                "relative": "Relative reps"}
SUS_METHODS = {"Rank of the own partner by local CKA (best; ~1 min per 10,000 pairs)": "rank",
               "Leave-one-out CKA gain (seconds)": "loo_cka"}
#: the fewest pairs the lab works on
MIN_PAIRS = 20
#: The lab reads at most this many of a workspace's pairs (a fixed random sample of whole photos
#: above it): the demo's 35,000 in full; a 1.6M-pair gather alone would be 8 GB.
ALIGN_MAX_PAIRS = 50_000


# ------------------------------------------------------------------------------------- data
@st.cache_data(show_spinner=False, max_entries=4)
def _demo_pairs(image_encoder: str, text_encoder: str, limit: int) -> dict:
    """One caption per Flickr8k photo, embedded by the two encoders (cached server-wide)."""
    pairs = matching.pair_embeddings(None, image_encoder, text_encoder, cache=state.embedding_cache(),
                                     one_caption_per_image=True, limit=limit, seed=0)
    return {"img": pairs.pair_image_vectors, "txt": pairs.text_vectors, "paths": pairs.pair_paths,
            "captions": pairs.captions, "ids": pairs.pair_ids, "groups": pairs.pair_image,
            "skipped": [str(s) for s in pairs.skipped]}


@st.cache_resource(show_spinner=False, max_entries=2)
def _live_pairs(ws_path: str, stamp: tuple, _model) -> dict:
    """The live pairs the lab reads (kept until the next edit): all of them up to
    ``ALIGN_MAX_PAIRS``, else a fixed random sample of whole photos (``core.arrays.sample_groups``)."""
    b = _model.vectors
    pos = np.sort(b.positions(_model.session.pair_ids))
    pos = pos[sample_groups(b.pair_img[pos], ALIGN_MAX_PAIRS)]
    return {"img": b.img[b.pair_img[pos]], "txt": b.cap[pos],
            "paths": [str(_model.ws.resolve(b.pair_refs[i])) for i in pos],
            "captions": [b.captions[i] for i in pos], "ids": [int(b.pair_ids[i]) for i in pos],
            "groups": b.pair_img[pos], "of": _model.n_anchors, "set": f"{ws_path}|{stamp}"}


def _workspace_pairs(ws) -> tuple[dict, str, str]:
    """The workspace's live pairs (or a sample of them) and its two encoder names."""
    model = state.require_model(ws)
    s = model.vectors.settings
    return _live_pairs(str(ws.path), model.stamp, model), s["image_encoder"], s["text_encoder"]


def _builtin(modality: str) -> list[str]:
    try:
        from core.encoders import builtin_names

        return list(builtin_names(modality))
    except Exception:  # noqa: BLE001
        return ["efficientnet-lite0"] if modality == "image" else ["minilm"]


def _demo_source(column) -> tuple[dict, str, str] | None:
    """Encoder and size pickers for the demo pairs, and the pairs (None, said, if unavailable)."""
    cc = column.columns(3)
    ienc = cc[0].selectbox("Image encoder", _builtin("image"), key="align_ienc")
    tenc = cc[1].selectbox("Text encoder", _builtin("text"), key="align_tenc")
    limit = cc[2].number_input("Pairs (one caption per image)", 200, 7000, 2000, step=100, key="align_limit")
    try:
        with st.spinner("Embedding the pairs (cached after the first time)…"):
            data = _demo_pairs(ienc, tenc, int(limit))
    except ValueError as error:
        st.error(plain(error))
        return None
    if data["skipped"]:
        st.warning(f"{count(len(data['skipped']), 'picture')} could not be read and were left out:",
                   icon=":material/warning:")
        st.text("\n".join(data["skipped"][:10]))  # plain text: paths are never markdown
    return data, ienc, tenc


def _choose_pairs() -> tuple[dict, str, str] | None:
    """The pairs the lab reads (the workspace's or the demo's), their source and the two encoders."""
    with st.container(border=True):
        c1, c2 = st.columns([1.3, 2])
        source = c1.radio("Pairs", [SOURCE_WS, SOURCE_DEMO], key="align_source")
        if source == SOURCE_WS:
            ws = state.require_workspace()
            data, ienc, tenc = _workspace_pairs(ws)
            sampled = (f" (a fixed random sample of whole photos from {data['of']:,}; at most {ALIGN_MAX_PAIRS:,})"
                       if len(data["ids"]) < data["of"] else "")
            c2.markdown(f"**{plain(ws.name)}**: {len(data['ids']):,} active pairs{sampled} · image encoder "
                        f"*{plain(ienc)}* · text encoder *{plain(tenc)}* (change them in Settings).")
        else:
            demo = _demo_source(c2)
            if demo is None:
                return None
            data, ienc, tenc = demo
    return data, source, f"{ienc}|{tenc}"


# --------------------------------------------------------------------------------------- CKA
@st.cache_data(show_spinner=False, max_entries=8)
def _cka_summary(_img, _txt, key: str, max_n: int = 3000) -> dict:
    """The shuffle curves of one subset (all pairs up to ``max_n``); the headline CKAs are their 0 %
    points, so the metrics and the table are one computation on the same pairs."""
    rng = np.random.default_rng(0)
    n = _img.shape[0]
    sub = np.sort(rng.choice(n, size=min(n, max_n), replace=False))
    t0 = time.perf_counter()
    out = {"n": int(sub.size),
           "curve_linear": cka.shuffle_curve(_img[sub], _txt[sub], kernel="linear", repeats=2),
           "curve_rbf": cka.shuffle_curve(_img[sub], _txt[sub], kernel="rbf", repeats=2)}
    out["linear"], out["rbf"] = out["curve_linear"][0]["cka"], out["curve_rbf"][0]["cka"]
    out["seconds"] = time.perf_counter() - t0
    return out


def _shuffle_figure(summary: dict) -> go.Figure:
    fig = go.Figure()
    for name, curve in (("linear", summary["curve_linear"]), ("RBF", summary["curve_rbf"])):
        fig.add_trace(go.Scatter(x=[100 * c["fraction"] for c in curve], y=[c["cka"] for c in curve],
                                 mode="lines+markers", name=f"{name} CKA"))
    fig.update_layout(title="CKA falls as pairs are shuffled (the paper's Table 3.1)",
                      xaxis_title="pairs shuffled (%)", yaxis_title="CKA", height=320,
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def cka_section(data: dict, key: str) -> None:
    """Linear and RBF CKA of the pairs, and how they fall as pairs are shuffled."""
    n = len(data["ids"])
    st.subheader("Do they see the world alike?")
    with st.spinner("Computing CKA…"):
        summary = _cka_summary(data["img"], data["txt"], key)
    on = (f"on all {n:,} pairs" if summary["n"] == n
          else f"on a random {summary['n']:,} of the {n:,} pairs (the same ones as the table below)")
    m1, m2, m3 = st.columns(3)
    m1.metric("Linear CKA", f"{summary['linear']:.3f}", help=f"Linear kernel, biased estimator, {on}.")
    m2.metric("RBF CKA", f"{summary['rbf']:.3f}",
              help=f"Gaussian kernel, bandwidth = median distance, biased estimator, {on}.")
    m3.metric("Pairs", f"{n:,}")
    st.plotly_chart(_shuffle_figure(summary), key="align_shuffle_chart")
    st.dataframe(pd.DataFrame({"shuffled": [f"{c['fraction']:.0%}" for c in summary["curve_linear"]],
                               "linear CKA": [round(c["cka"], 3) for c in summary["curve_linear"]],
                               "RBF CKA": [round(c["cka"], 3) for c in summary["curve_rbf"]]}
                              ).set_index("shuffled").T, key="align_shuffle_table")
    st.caption(f"Computed {on}; 0 % shuffled is the headline value, each other column the mean of two "
               "random shuffles. The paper's (biased) estimator reads higher on fewer pairs, so compare "
               "values computed on the same number of pairs.")


# ---------------------------------------------------------------------------------- matching
@st.cache_data(show_spinner=False, max_entries=16)
def _matching(_img, _txt, _groups, key: str, n_base: int, n_query: int, seeds: int, methods: tuple):
    # one pair per picture, as in the paper's protocol: several captions of one picture would be
    # indistinguishable targets
    first = first_pair_per_image(_groups)
    if n_base + n_query > first.size:
        raise ValueError(f"{n_base} base + {n_query} queries need more than the {first.size} distinct "
                         "pictures available; lower them.")
    rows = matching.evaluate(_img[first], _txt[first], n_base=n_base, n_query=n_query,
                             seeds=tuple(range(seeds)), methods=methods, qap_restarts=2)
    return matching.summarize(rows)


def _want(flag: str) -> None:
    st.session_state[flag] = True  # a callback: survives any rerun before the script body runs


def _matching_inputs(data: dict) -> tuple[int, int, int, list[str]]:
    """Base pairs, queries, seeds and methods, bounded by the number of distinct pictures."""
    n_pictures = int(np.unique(np.asarray(data["groups"])).size)
    max_base = max(3, min(320, n_pictures // 2))
    cc = st.columns(4)
    n_base = cc[0].number_input("Base pairs", 3, max_base, min(320, max(3, n_pictures // 3)), key="align_nbase")
    room = max(2, n_pictures - int(n_base))
    n_query = cc[1].number_input("Queries", 2, room, max(2, min(500, room // 2)), key="align_nquery")
    seeds = cc[2].number_input("Seeds", 1, 5, 1, key="align_seeds")
    methods = cc[3].multiselect("Methods", list(matching.METHODS), default=list(matching.METHODS),
                                key="align_methods", format_func=lambda m: METHOD_NAMES.get(m, m))
    return int(n_base), int(n_query), int(seeds), methods


def _matching_table(rows: list[dict]) -> None:
    f = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    st.dataframe(pd.DataFrame([{"method": METHOD_NAMES.get(r["method"], r["method"]),
                                "matching accuracy %": f(r["matching_acc"]), "top-1 %": f(r["top1"]),
                                "top-5 %": f(r["top5"]), "top-10 %": f(r["top10"]),
                                "seconds": f"{r['seconds']:.2f}"} for r in rows]),
                 hide_index=True, key="align_match_table")
    if any(r["top1"] is None for r in rows):
        st.caption("– : QAP returns one matching of all queries, not a ranking, so top-k retrieval "
                   "does not apply to it.")


@st.fragment
def matching_section(data: dict, key: str) -> None:
    """Match held-out captions to pictures from a few base pairs, beside two baselines."""
    st.subheader("Match captions to pictures without training")
    st.caption("A base set of true pairs (k-means on the pictures, one per cluster) anchors both spaces; "
               "the remaining captions are matched to shuffled pictures. **QAP** maximises the CKA of "
               "the whole matching; **local CKA** scores each caption–picture pair; the baselines are a "
               "least-squares **linear map** and **relative representations**. Chance is 1/queries.")
    n_base, n_query, seeds, methods = _matching_inputs(data)
    st.button("Run matching", icon=":material/join:", key="align_run_matching", disabled=not methods,
              on_click=_want, args=("align_want_matching",))
    if st.session_state.pop("align_want_matching", False):
        try:
            with st.spinner("Matching…"):
                st.session_state["align_match_result"] = (
                    key, _matching(data["img"], data["txt"], data["groups"], key, n_base, n_query, seeds,
                                   tuple(methods)))
        except ValueError as error:
            st.error(plain(error))
    res = st.session_state.get("align_match_result")
    if res and res[0] == key:
        _matching_table(res[1])


# ------------------------------------------------------------------------------ suspicious
@st.cache_data(show_spinner=False, max_entries=8)
def _suspicion(_img, _txt, _groups, key: str, method: str):
    return matching.suspicious_pair_scores(_img, _txt, groups=_groups, method=method)


def _suspicious_table(data: dict, method: str, scores: np.ndarray, selectable: bool):
    """The 25 most suspicious pairs with their pictures; returns the table's selection event."""
    n = len(data["ids"])
    rank = matching.suspicion_rank(scores)
    top = np.argsort(-scores, kind="stable")[:25]
    unit = ("share of the comparison captions and pictures that fit better than the own partner"
            if method == "rank" else "rise of the linear CKA of all pairs when this one is left out")
    event = st.dataframe(pd.DataFrame({
        "picture": [thumbnail_url(data["paths"][i], 96) for i in top],
        "caption": [data["captions"][i] for i in top],
        "score": [float(scores[i]) for i in top],
        "rank": [f"{rank[i]:,} of {n:,}" for i in top],
        "most suspicious": [f"top {100 * rank[i] / n:.2g} %" for i in top],
        "pair": [data["ids"][i] for i in top],
    }), column_config={"picture": st.column_config.ImageColumn("picture", width="small"),
                       "score": st.column_config.NumberColumn(
                           "score", format="%.3f" if method == "rank" else "%.2e", help=f"Raw score: {unit}."),
                       "rank": st.column_config.TextColumn(help="1 = the most suspicious pair; tied "
                                                                "scores share a rank.")},
        hide_index=True, key=state.selection_key("align_suspicious_table"),
        on_select="rerun" if selectable else "ignore", selection_mode="multi-row")
    st.caption(f"The 25 most suspicious of {n:,} pairs. Score: {unit}.")
    return event, top


def _send_to_curate(data: dict, event, top: np.ndarray) -> None:
    """Open Curate with the selected pairs (all 25 when none is selected) as its selection."""
    rows = list(event.selection.rows) if event else []
    send = [int(data["ids"][top[r]]) for r in (rows or range(len(top)))]
    label = (f"Send the {count(len(send), 'selected pair')} to Curate" if rows
             else f"Send all {len(send)} to Curate")
    if st.button(label, icon=":material/send:", key="align_send",
                 help="Opens Curate with these pairs selected: preview removing them, then remove."):
        st.session_state["curate_sent"] = {"ids": send, "from": "Align's suspicious pairs"}
        st.switch_page("pages/curate.py")


@st.fragment
def suspicious_section(data: dict, key: str, own: bool) -> None:
    """Pairs whose picture's neighbourhood disagrees with their caption's, found without labels."""
    st.subheader("Suspicious pairs")
    st.caption("Without any labels: each pair's own caption is ranked among other captions (and its "
               "picture among other pictures) by local CKA against a base set of other pairs. A pair "
               "whose partner ranks poorly is suspicious — often a caption that describes something else.")
    sus_label = st.radio("Score", list(SUS_METHODS), key="align_sus_method", horizontal=True)
    st.button("Find suspicious pairs", icon=":material/search:", key="align_run_suspicious",
              on_click=_want, args=("align_want_suspicion",))
    if st.session_state.pop("align_want_suspicion", False):
        try:
            with st.spinner("Scoring every pair…"):
                method = SUS_METHODS[sus_label]
                st.session_state["align_suspicion"] = (
                    key, method, _suspicion(data["img"], data["txt"], data["groups"], key, method))
        except ValueError as error:
            st.error(plain(error))
    sus = st.session_state.get("align_suspicion")
    if not (sus and sus[0] == key):
        return
    event, top = _suspicious_table(data, sus[1], sus[2], selectable=own)
    if own:
        _send_to_curate(data, event, top)
    else:
        st.caption("Only the workspace's own pairs can be sent to Curate (these are demo pairs).")


def main() -> None:
    page_header("Align", (
        "Two encoders that never saw each other — do they organise the same pictures and captions the "
        "same way? **CKA** compares the two similarity structures (1 = identical, 0 = unrelated); "
        "**matching** pairs unpaired images and captions using only a small base set of true pairs; "
        "**suspicious pairs** are the ones whose image neighbourhood disagrees with their caption's."))
    chosen = _choose_pairs()
    if chosen is None:
        return
    data, source, encoders = chosen
    n = len(data["ids"])
    if n < MIN_PAIRS:
        st.warning(f"Only {n} pairs: the alignment lab needs at least {MIN_PAIRS} image–caption pairs.")
        return
    # names the pairs every result is kept for: a workspace's live set (its model's stamp) or the demo's
    key = f"{source}|{encoders}|{data.get('set', '')}|{n}|{data['ids'][0]}|{data['ids'][-1]}"
    cka_section(data, key)
    matching_section(data, key)
    suspicious_section(data, key, own=source == SOURCE_WS)


main()

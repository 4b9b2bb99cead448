"""Classify & explain: pick or upload a picture, see the prediction and the anchor pairs behind it.

The page is one entry call, :func:`main`: the headline, the gallery and the prediction side by side,
the pairs behind the answer (a fragment: only the open class's tab is drawn, and switching tab
redraws only that panel; a Remove reruns the whole page: every number moves), the figures (a
fragment: switching figure redraws only that panel) and the class/prompt form.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from ui import boot

boot.ensure_app()

from core.asif import indefinite_article
from ui import state
from ui.safe import plain
from ui.charts import histogram_figure, pairs_map_figure
from ui.widgets import image_path, metrics_header, page_header, pct, thumbnail_url

#: gallery pictures per page
PER_PAGE = 8
FIG_MAP = "Pairs map (ASIF Fig. 7)"
FIG_HIST = "Similarity histograms (ASIF Fig. 3)"


# ----------------------------------------------------------------------------- choose a picture
def _set_query(q: dict) -> None:
    st.session_state["query"] = q


def _gallery_pool(vec, preds: np.ndarray, only_class: str, only: str) -> np.ndarray:
    """The labeled pictures that pass the class and right/wrong filters."""
    labels = vec.item_labels
    pool = np.arange(len(vec.items))
    if only_class != "any":
        pool = pool[labels[pool] == vec.classes.index(only_class)]
    if only == "mistakes":
        pool = pool[preds[pool] != labels[pool]]
    elif only == "correct":
        pool = pool[preds[pool] == labels[pool]]
    return pool


def _gallery_page(ws, vec, preds: np.ndarray, pool: np.ndarray) -> None:
    """Eight pictures of ``pool`` (a class-balanced sample, stable across reruns) as pick buttons;
    "More pictures" moves on."""
    classes, labels = vec.classes, vec.item_labels
    page = st.session_state.get("gallery_page", 0)
    order = pool[np.random.default_rng(1234).permutation(len(pool))]
    shown = np.roll(order, -((page * PER_PAGE) % len(order)))[:PER_PAGE]
    cols = st.columns(4)
    for j, i in enumerate(shown.tolist()):
        with cols[j % 4]:
            url = thumbnail_url(image_path(ws, vec.items[i].image), 112)
            if url:
                st.image(url, width="stretch")
            ok = preds[i] == labels[i]
            st.button(plain(classes[labels[i]]) + ("" if ok else " ✗"), key=f"pick_{i}",
                      on_click=_set_query, args=({"kind": "eval", "index": int(i)},), width="stretch",
                      help=f"Labeled picture #{i} ({'tuning' if vec.is_tune[i] else 'test'} part): "
                           f"true class {plain(classes[labels[i]])}, predicted {plain(classes[preds[i]])}")
    if st.button("More pictures", icon=":material/refresh:"):
        st.session_state["gallery_page"] = page + 1
        st.rerun()


def gallery(ws, vec, preds: np.ndarray) -> None:
    """Step 1: filter the labeled pictures and pick one, or upload a picture."""
    st.subheader("1 · Pick a picture")
    f1, f2 = st.columns(2)
    only_class = f1.selectbox("True class", ["any"] + vec.classes, key="gallery_class")
    only = f2.radio("Show", ["all", "mistakes", "correct"], horizontal=True, key="gallery_filter")
    pool = _gallery_pool(vec, preds, only_class, only)
    if len(pool) == 0:
        st.info("No test picture matches these filters.")
    else:
        _gallery_page(ws, vec, preds, pool)
    up = st.file_uploader("…or upload your own picture", type=["jpg", "jpeg", "png", "webp", "bmp", "gif"],
                          key="query_upload")
    if up is not None and st.session_state.get("query", {}).get("upload_id") != up.file_id:
        _set_query({"kind": "upload", "name": up.name, "bytes": up.getvalue(), "upload_id": up.file_id})


def _current_query(vec, preds: np.ndarray) -> dict | None:
    """The picture to explain; at first the first test picture the model gets wrong (or any)."""
    query = st.session_state.get("query")
    if query is None and len(vec.items):
        wrong = np.flatnonzero(preds != vec.item_labels)
        query = {"kind": "eval", "index": int(wrong[0] if len(wrong) else 0)}
        st.session_state["query"] = query
    return query


# ----------------------------------------------------------------------------- the answer
def _explain(live, qvec):
    """The explanation of ``qvec`` under the live pairs, kept until the next edit."""
    key = (live.stamp, qvec.tobytes().__hash__())
    cached = st.session_state.get("explain_cache")
    if cached is None or cached[0] != key:
        cached = (key, live.explain(qvec))
        st.session_state["explain_cache"] = cached
    return cached[1]


def _query_vector(ws, vec, q: dict):
    """The query's vector, its picture (a path or an image) and its true class (None if unknown)."""
    if q["kind"] == "eval":
        i = q["index"]
        return vec.item_vecs[i], image_path(ws, vec.items[i].image), vec.classes[vec.item_labels[i]]
    from core.encoders import load_image

    image = load_image(q["bytes"])  # ValueError with a readable message for a corrupt file
    return vec.embed_picture(image), image, None


def _verdict(model, explanation, truth: str | None) -> None:
    """The predicted class, whether it is right, and the five most probable classes."""
    classes = model.vectors.classes
    probs = model.probabilities(explanation.scores)
    pred = classes[explanation.prediction]
    verdict = ""
    if truth is not None:
        verdict = " ✓ correct" if truth == pred else f" ✗ (true class: **{plain(truth)}**)"
    st.markdown(f"### It's {indefinite_article(pred)} **{plain(pred)}**{verdict}")
    st.caption(f"{pct(probs[explanation.prediction])} confident · ASIF score "
               f"{explanation.scores[explanation.prediction]:.3f}")
    for i in np.argsort(-explanation.scores, kind="stable")[:5].tolist():
        st.progress(float(probs[i]), text=f"{plain(classes[i])} · {pct(probs[i])}")


def prediction(ws, model, query: dict | None):
    """Step 2: the picture and what the model says; ``(explanation, vector)``, or None (the page
    ends: nothing picked, or an unreadable upload)."""
    vec = model.vectors
    st.subheader("2 · What the model says")
    if query is None:
        st.info("Pick a picture on the left.")
        return None
    try:
        qvec, qimage, truth = _query_vector(ws, vec, query)
    except ValueError:
        st.error("That file could not be used as a picture: it is not a readable image, or it is over "
                 "the pixel limit.")
        return None
    explanation = _explain(model, qvec)
    a, b = st.columns([1, 1.3])
    a.image(qimage, width="stretch",
            caption=plain(query["name"]) if query.get("name") else
            f"labeled picture #{query['index']} ({'tuning' if vec.is_tune[query['index']] else 'test'} part)")
    with b:
        _verdict(model, explanation, truth)
    return explanation, qvec


# ----------------------------------------------------------------------------- why?
def _remove(ws, pair_ids: list[int]) -> None:
    """Remove pairs (one edit) before the page reruns (one script run per click: the headline,
    sidebar and figures below all show the new model)."""
    try:
        state.remove_pairs(ws, state.require_model(ws), [int(i) for i in pair_ids],
                           note="from Classify & explain", where="classify")
    except ValueError as error:
        st.session_state["classify_error"] = str(error)
    st.rerun()  # the whole page, not only the pairs panel the button is in


def _photo_entry(ws, c: int, ref: str, caps: list[dict]) -> None:
    """One anchor photo, its captions with their weights, and Remove buttons (one per caption, and
    one for all of the photo's captions)."""
    cols = st.columns([1, 5, 1.3])
    url = thumbnail_url(image_path(ws, ref), 96)
    if url:
        cols[0].image(url, width=80)
    for r in caps:
        cols[1].markdown(f"**“{plain(r['caption'])}”**")
        cols[1].caption(f"pair #{r['pair_id']} · image weight {r['image_weight']:.3f} × "
                        f"text weight {r['text_weight']:.3f} = **{r['product']:.4f}** "
                        f"({100 * r['share']:.0f}% of the score)")
    buttons = [(f"rm_{c}_{r['pair_id']}", "Remove" if len(caps) == 1 else f"Remove #{r['pair_id']}",
                [r["pair_id"]]) for r in caps]
    if len(caps) > 1:
        cols[1].caption(f"This photo's {len(caps)} captions together: "
                        f"{100 * sum(r['share'] for r in caps):.0f}% of the score.")
        buttons.insert(0, (f"rmphoto_{c}_{caps[0]['pair_id']}", f"Remove all {len(caps)}",
                           [r["pair_id"] for r in caps]))
    for key, label, ids in buttons:
        cols[2].button(label, key=key, icon=":material/delete:", on_click=_remove, args=(ws, ids),
                       help="Take these pairs out of the anchors, as one edit (undo on the Curate page)")


def _edit_messages() -> None:
    """The outcome of the last edit made on this page, or its error."""
    last = st.session_state.get("last_edit")
    if last and last.get("where") == "classify":
        st.success(last["message"], icon=":material/check_circle:")
    error = st.session_state.pop("classify_error", None)
    if error:
        st.error(plain(error))


@st.fragment
def pairs_panel(ws, classes: list[str], expl) -> None:
    """Step 3: for each of the top 3 classes, the anchor pairs behind its score (one tab each; only
    the open tab is drawn: hidden panes would be sent and drawn on every run)."""
    st.divider()
    st.subheader(f"3 · Why *{plain(classes[expl.prediction])}*? The anchor pairs behind the answer")
    st.caption("Each pair scores **image weight × text weight**: how close its photo is to your picture, "
               "times how close its caption is to the class prompt. The class with the largest total "
               "wins. A wrong or misleading pair? Remove it and watch the accuracy move.")
    order = np.argsort(-expl.scores, kind="stable")
    st.session_state["map_highlight"] = [r["pair_id"] for r in expl.contributions(int(order[0]), top=20)]
    _edit_messages()
    # class names only: a label that changes (a score after an edit) would reset the open tab
    tabs = st.tabs([plain(classes[c]) for c in order[:3]], key="classify_why_tab", on_change="rerun")
    for tab, c in zip(tabs, order[:3].tolist()):
        if not tab.open:
            continue
        with tab:
            st.caption(f"ASIF score of *{plain(classes[c])}*: {expl.scores[c]:.3f}")
            rows = expl.contributions(c, top=24)
            if not rows:
                st.info(f"No anchor pair supports *{plain(classes[c])}* for this picture.")
                continue
            photos: dict[str, list[dict]] = {}  # the captions of one photo form one entry
            for r in rows:
                photos.setdefault(r["image"], []).append(r)
            for ref, caps in list(photos.items())[:8]:
                _photo_entry(ws, c, ref, caps)


# ----------------------------------------------------------------------------- figures
def _figures(live, e, qvec) -> dict:
    """The explanation's figures (plotly figures are slow to build), kept per (model version,
    picture) like the explanation: a rerun that changes neither re-sends them as they are."""
    key = (live.stamp, qvec.tobytes().__hash__())
    cached = st.session_state.get("figures_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    classes = live.vectors.classes
    rows = e.scatter_data(np.argsort(-e.scores, kind="stable")[:3].tolist())  # Fig. 7: the top 3 classes
    n = len(e.all_image_similarity)
    topk = np.zeros(n, dtype=bool)
    topk[e.positions] = True
    figs = {"map": pairs_map_figure(rows) if rows else None,
            "image": histogram_figure(e.all_image_similarity, topk, f"top-{len(e.positions)} anchors",
                                      "other anchors", "anchor photo ↔ your picture"),
            "caption": histogram_figure(e.all_caption_similarity[e.prediction], topk,
                                        "captions of top-k photos", "other captions",
                                        f"anchor caption ↔ prompt for “{classes[e.prediction]}”")}
    st.session_state["figures_cache"] = (key, figs)
    return figs


@st.fragment
def figures_panel(figures: dict) -> None:
    """One figure at a time (a hidden tab would still be drawn, and re-drawn, by the browser on
    every run); switching figure reruns only this panel."""
    st.divider()
    shown = st.segmented_control("Figure", [FIG_MAP, FIG_HIST], default=FIG_MAP, key="classify_figure",
                                 label_visibility="collapsed") or FIG_MAP
    if shown == FIG_MAP:
        if figures["map"] is not None:
            st.plotly_chart(figures["map"], width="stretch", key="pairs_map")
            st.caption("For each of the top 3 classes: the anchor pairs whose photo is among the picture's "
                       "nearest (right) or whose caption is among the class prompt's nearest (top). Only "
                       "pairs near both count (large dots: image × text weight); the class with the "
                       "largest total area wins. Hover a dot for its pair and caption; the photos of the "
                       "pairs that decide are listed above.")
    else:
        c1, c2 = st.columns(2)
        c1.plotly_chart(figures["image"], width="stretch", key="hist_image")
        c2.plotly_chart(figures["caption"], width="stretch", key="hist_caption")
        st.caption("Left: the picture's similarity to every anchor photo; the nearest k (orange) are the "
                   "ones ASIF uses. Right: their captions are also closer to the predicted class prompt than "
                   "the rest — captions of similar images are similar, which is why ASIF works.")


def classes_form(ws) -> None:
    """Edit the classes and prompt templates in place (the model is rebuilt)."""
    s = ws.settings()
    with st.expander("Classes and prompt templates"), st.form("classes_form"):
        cls_text = st.text_area("Classes (one per line)", "\n".join(s["classes"]), height=150)
        tpl_text = st.text_area("Prompt templates ({} is the class name)", "\n".join(s["templates"]),
                                height=120)
        if st.form_submit_button("Apply"):
            try:
                ws.update_settings(classes=cls_text.splitlines(), templates=tpl_text.splitlines())
                st.session_state.pop("query", None)
                st.rerun()
            except ValueError as error:
                st.error(plain(error))


def main() -> None:
    page_header("Classify & explain", (
        "The model has never been trained: it names a picture by finding the anchor pairs "
        "(a photo and its caption) whose photos look like it, and whose captions read like a class "
        "prompt. Pick a picture to see which pairs decided."))
    ws = state.require_workspace()
    model = state.require_model(ws)
    metrics_header(model, ws)
    preds = model.session.predictions
    left, right = st.columns([1, 1.4], gap="large")
    with left:
        gallery(ws, model.vectors, preds)
    with right:
        shown = prediction(ws, model, _current_query(model.vectors, preds))
    if shown is None:
        return
    explanation, qvec = shown
    pairs_panel(ws, model.vectors.classes, explanation)
    figures_panel(_figures(model, explanation, qvec))
    classes_form(ws)


main()

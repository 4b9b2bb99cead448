"""Classify & explain: pick or upload a picture, see the prediction and the anchor pairs behind it."""
from __future__ import annotations

import numpy as np
import streamlit as st

from ui import boot

boot.ensure_app()

from core.asif import indefinite_article
from ui import state
from ui.safe import plain
from ui.charts import histogram_figure, pairs_map_figure
from ui.widgets import image_path, metrics_header, pct, thumbnail_url

st.title("Classify & explain")
st.caption("The model has never been trained: it names a picture by finding the anchor pairs "
           "(a photo and its caption) whose photos look like it, and whose captions read like a class "
           "prompt. Pick a picture to see which pairs decided.")

ws = state.require_workspace()
model = state.require_model(ws)
vec = model.vectors
classes = vec.classes
refs = [item.image for item in vec.items]
labels = vec.item_labels

metrics_header(model, ws)


# ----------------------------------------------------------------------------- choose a picture
def _set_query(q: dict) -> None:
    st.session_state["query"] = q


preds = model.session.predictions
left, right = st.columns([1, 1.4], gap="large")
with left:
    st.subheader("1 · Pick a picture")
    f1, f2 = st.columns(2)
    only_class = f1.selectbox("True class", ["any"] + classes, key="gallery_class")
    only = f2.radio("Show", ["all", "mistakes", "correct"], horizontal=True, key="gallery_filter")
    pool = np.arange(len(refs))
    if only_class != "any":
        pool = pool[labels[pool] == classes.index(only_class)]
    if only == "mistakes":
        pool = pool[preds[pool] != labels[pool]]
    elif only == "correct":
        pool = pool[preds[pool] == labels[pool]]
    if len(pool) == 0:
        st.info("No test picture matches these filters.")
    else:
        # a class-balanced sample, stable across reruns; "More pictures" moves on
        page = st.session_state.get("gallery_page", 0)
        rng = np.random.default_rng(1234)
        order = pool[rng.permutation(len(pool))]
        per_page = 8
        start = (page * per_page) % len(order)
        shown = np.roll(order, -start)[:per_page]
        cols = st.columns(4)
        for j, i in enumerate(shown.tolist()):
            with cols[j % 4]:
                url = thumbnail_url(image_path(ws, refs[i]), 112)
                if url:
                    st.image(url, width="stretch")
                ok = preds[i] == labels[i]
                st.button(plain(classes[labels[i]]) + ("" if ok else " ✗"), key=f"pick_{i}",
                          on_click=_set_query, args=({"kind": "eval", "index": int(i)},),
                          width="stretch",
                          help=f"Labeled picture #{i} ({'tuning' if vec.is_tune[i] else 'test'} part): "
                               f"true class {plain(classes[labels[i]])}, "
                               f"predicted {plain(classes[preds[i]])}")
        if st.button("More pictures", icon=":material/refresh:"):
            st.session_state["gallery_page"] = page + 1
            st.rerun()
    up = st.file_uploader("…or upload your own picture", type=["jpg", "jpeg", "png", "webp", "bmp", "gif"],
                          key="query_upload")
    if up is not None:
        data = up.getvalue()
        if st.session_state.get("query", {}).get("upload_id") != up.file_id:
            _set_query({"kind": "upload", "name": up.name, "bytes": data, "upload_id": up.file_id})

query = st.session_state.get("query")
if query is None and len(refs):
    # start with something to look at: the first test picture the model gets wrong (or any)
    wrong = np.flatnonzero(preds != labels)
    query = {"kind": "eval", "index": int(wrong[0] if len(wrong) else 0)}
    st.session_state["query"] = query


def _explain(live, qvec):
    """The explanation of ``qvec`` under the live pairs, kept until the next edit."""
    key = (id(live), live.version, qvec.tobytes().__hash__())
    cached = st.session_state.get("explain_cache")
    if cached is None or cached[0] != key:
        cached = (key, live.explain(qvec))
        st.session_state["explain_cache"] = cached
    return cached[1]


def _query_vector(q: dict):
    if q["kind"] == "eval":
        return vec.item_vecs[q["index"]], image_path(ws, refs[q["index"]]), \
            classes[labels[q["index"]]]
    from core.encoders import load_image

    image = load_image(q["bytes"])  # ValueError with a readable message for a corrupt file
    return vec.embed_picture(image), image, None


with right:
    st.subheader("2 · What the model says")
    if query is None:
        st.info("Pick a picture on the left.")
        st.stop()
    try:
        qvec, qimage, truth = _query_vector(query)
    except ValueError:
        st.error("That file could not be used as a picture: it is not a readable image, or it is over "
                 "the pixel limit.")
        st.stop()
    explanation = _explain(model, qvec)
    probs = model.probabilities(explanation.scores)
    order = np.argsort(-explanation.scores, kind="stable")
    pred = classes[explanation.prediction]
    a, b = st.columns([1, 1.3])
    with a:
        st.image(qimage, width="stretch",
                 caption=plain(query["name"]) if query.get("name") else
                 f"labeled picture #{query['index']} ({'tuning' if vec.is_tune[query['index']] else 'test'} part)")
    with b:
        verdict = ""
        if truth is not None:
            verdict = " ✓ correct" if truth == pred else f" ✗ (true class: **{plain(truth)}**)"
        st.markdown(f"### It's {indefinite_article(pred)} **{plain(pred)}**{verdict}")
        st.caption(f"{pct(probs[explanation.prediction])} confident · ASIF score "
                   f"{explanation.scores[explanation.prediction]:.3f}")
        for i in order[:5].tolist():  # this picture's five most probable classes, most probable first
            st.progress(float(probs[i]), text=f"{plain(classes[i])} · {pct(probs[i])}")


# ----------------------------------------------------------------------------- why?
st.divider()
st.subheader(f"3 · Why *{plain(pred)}*? The anchor pairs behind the answer")
st.caption("Each pair scores **image weight × text weight**: how close its photo is to your picture, "
           "times how close its caption is to the class prompt. The class with the largest total "
           "wins. A wrong or misleading pair? Remove it and watch the accuracy move.")


def _remove(pair_ids: list[int]) -> None:
    """Remove pairs (one edit) before the page reruns (one script run per click: the headline,
    sidebar and figures below all show the new model)."""
    try:
        state.remove_pairs(ws, state.require_model(ws), [int(i) for i in pair_ids],
                           note="from Classify & explain", where="classify")
    except ValueError as error:
        st.session_state["classify_error"] = str(error)


def pairs_panel(expl):
    order = np.argsort(-expl.scores, kind="stable")
    st.session_state["map_highlight"] = [r["pair_id"] for r in expl.contributions(int(order[0]), top=20)]
    last = st.session_state.get("last_edit")
    if last and last.get("where") == "classify":
        st.success(last["message"], icon=":material/check_circle:")
    error = st.session_state.pop("classify_error", None)
    if error:
        st.error(plain(error))
    tabs = st.tabs([f"{plain(classes[c])} · {expl.scores[c]:.3f}" for c in order[:3]])
    for tab, c in zip(tabs, order[:3]):
        with tab:
            rows = expl.contributions(int(c), top=24)
            if not rows:
                st.info(f"No anchor pair supports *{plain(classes[c])}* for this picture.")
                continue
            photos: dict[str, list[dict]] = {}  # the captions of one photo form one entry
            for r in rows:
                photos.setdefault(r["image"], []).append(r)
            for ref, caps in list(photos.items())[:8]:
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
                    cols[2].button(label, key=key, icon=":material/delete:", on_click=_remove, args=(ids,),
                                   help="Take these pairs out of the anchors, as one edit (undo on the "
                                        "Curate page)")


pairs_panel(explanation)

# ----------------------------------------------------------------------------- figures
st.divider()


def _pairs_map(live, e, top3) -> list[dict]:
    """Fig. 7's points: for each of the top 3 classes, the picture's k nearest anchor pairs and the
    class prompt's k nearest captions (the union of the two sparse supports); product 0 off the overlap."""
    current = live.current_model()
    meta, ids = current.metadata or [], current.pair_ids
    rows = []
    for c in top3:
        prod = dict(zip(e.positions.tolist(), e.product[c].tolist()))
        for pos in sorted(set(e.positions.tolist()) | set(e.caption_topk[c].tolist())):
            rows.append({"class_name": classes[c], "pair_id": int(ids[pos]),
                         "image_similarity": float(e.all_image_similarity[pos]),
                         "caption_similarity": float(e.all_caption_similarity[c, pos]),
                         "product": float(prod.get(pos, 0.0)),
                         "caption": (meta[pos] if pos < len(meta) else {}).get("caption", "")})
    return rows


def _figures(live, e, qvec) -> dict:
    """The explanation's figures (plotly figures cost tens of ms each to build), kept per (model
    version, picture) like the explanation: a rerun that changes neither re-sends them as they are."""
    key = (id(live), live.version, qvec.tobytes().__hash__())
    cached = st.session_state.get("figures_cache")
    if cached is not None and cached[0] == key:
        return cached[1]
    rows = _pairs_map(live, e, np.argsort(-e.scores, kind="stable")[:3].tolist())
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


figures = _figures(model, explanation, qvec)
# one figure at a time: a hidden tab would still be drawn (and re-drawn) by the browser on every run
shown = st.segmented_control("Figure", ["Pairs map (ASIF Fig. 7)", "Similarity histograms (ASIF Fig. 3)"],
                             default="Pairs map (ASIF Fig. 7)", key="classify_figure",
                             label_visibility="collapsed") or "Pairs map (ASIF Fig. 7)"
if shown.startswith("Pairs map"):
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

with st.expander("Classes and prompt templates"):
    s = ws.settings()
    with st.form("classes_form"):
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

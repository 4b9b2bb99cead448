"""The Settings page's image-search panel: whether the model searches its anchor pictures exactly or
through FAISS with an exact re-rank (above a threshold, a workspace setting), and then the index's
measured recall@k against exact search and the prediction agreement on a sample of the labeled
pictures. Streamlit glue only: the work is :func:`core.ann.report`."""
from __future__ import annotations

import streamlit as st

from core.ann import ANN_MIN_ANCHORS, AnnIndex, report
from ui import state
from ui.safe import plain
from ui.widgets import pct

REPORT_KEY = "ann_panel_report"
#: labeled pictures the recall and the agreement are measured on
SAMPLE = 200


def _threshold_form(ws, current: int) -> None:
    with st.form("ann_threshold"):
        value = st.number_input("Approximate search from this many distinct anchor pictures", min_value=1,
                                value=int(current), step=1000, key="ann_min_anchors",
                                help=f"Below it the model compares every picture with every anchor picture "
                                     f"(exact). Default {ANN_MIN_ANCHORS:,}, where FAISS was measured faster.")
        if st.form_submit_button("Save threshold"):
            try:
                ws.update_settings(ann_min_anchors=int(value))
                st.rerun()
            except ValueError as error:
                st.error(plain(error))


def _measured(live, model) -> dict | None:
    """:func:`core.ann.report` of ``model`` once asked for (exact search over every anchor picture:
    minutes at paper scale, so never on a plain visit), kept for this session until the anchors or
    settings change."""
    stamp = live.stamp
    held = st.session_state.get(REPORT_KEY)
    if held is not None and held[0] == stamp:
        return held[1]
    if not st.button(f"Measure its recall and agreement on {SAMPLE} labeled pictures", key="ann_measure",
                     help=f"Searches {model.n_anchors:,} anchors exactly for comparison: seconds at 100,000 "
                          "anchors, a few minutes at 1.6 million."):
        return None
    with st.spinner(f"Measuring the index against exact search on {SAMPLE} labeled pictures…"):
        v = live.vectors
        held = (stamp, report(model, v.item_vecs, v.prompts, v.prompt_classes, n_classes=len(v.classes),
                              sample=SAMPLE))
    st.session_state[REPORT_KEY] = held
    return held[1]


def ann_panel(ws) -> None:
    """Which image search the current model of ``ws`` uses and, for FAISS, what it costs."""
    st.subheader("Image search")
    job = state.model_job(ws)
    if not job.done or job.model is None:
        st.caption("Shown once the model is ready.")
        return
    live = job.model
    model = live.current_model()
    _threshold_form(ws, model.ann.min_anchors)
    index = model.image_index()
    if not isinstance(index, AnnIndex):
        st.caption(f"Exact search: every picture is compared with every anchor picture (fewer distinct "
                   f"anchor pictures than the threshold, {model.ann.min_anchors:,}).")
        return
    st.caption(f"Approximate search: FAISS IVF-SQ8 over {index.n_distinct:,} distinct anchor pictures "
               f"({index.nlist:,} lists, {min(index.settings.nprobe, index.nlist):,} probed per picture), "
               f"its shortlist re-ranked exactly.")
    r = _measured(live, model)
    if r is None:
        return
    a, b, c = st.columns(3)
    a.metric(f"Recall@{r['k']:,} vs exact search", f"{r['recall']:.3f}")
    b.metric("Same prediction as exact search", pct(r["agreement"]))
    c.metric("Speed vs exact search", f"{r['speedup']:.1f}×")
    st.caption(f"Measured on {r['n_queries']:,} labeled pictures when this anchor set was first shown here.")

"""Small drawing helpers: thumbnails, accuracy metrics, pair cards (no computation)."""
from __future__ import annotations

import base64
import io
import os

import streamlit as st


@st.cache_data(show_spinner=False, max_entries=20000)
def thumbnail_url(path: str, size: int = 96) -> str:
    """A small JPEG of ``path`` as a data URL ('' when the file cannot be read)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a broken thumbnail must not break the page
        return ""


def thumbs(ws, refs, size: int = 96) -> list[str]:
    return [thumbnail_url(str(ws.resolve(r)), size) for r in refs]


def pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def _pts(delta: float | None):
    """A metric delta in points, or None; a change under 0.05 points gets no arrow colour."""
    if delta is None or delta != delta:
        return None, "off"
    return f"{100 * delta:+.1f} pts vs. start", ("off" if abs(delta) < 0.0005 else "normal")


def metrics_header(model, ws) -> None:
    """The headline every model page shows: test accuracy (held out: the honest figure), tuning
    accuracy (what choices read), anchor pairs; a warning when edits fit the tuning pictures."""
    m = model.metrics()
    start = ws.baseline(model.key)
    c = st.columns([1.2, 1.2, 1])
    d, colour = _pts(None if not start else m.test - start["test"])
    c[0].metric(f"Test accuracy (held out, {m.n_test:,} pictures)", pct(m.test), delta=d, delta_color=colour,
                help="Measured on pictures no choice ever reads: the figure to report.")
    d, colour = _pts(None if not start else m.tune - start["tune"])
    c[1].metric(f"Tuning accuracy ({m.n_tune:,} pictures)", pct(m.tune), delta=d, delta_color=colour,
                help="The pictures that influence, previews and auto-curation read.")
    c[2].metric("Anchor pairs", f"{m.n_anchors:,}", help=f"k = {m.k:,}, p = {model.vectors.p:g}")
    warning = m.fitting_tuning(start)
    if warning:
        st.warning(warning, icon=":material/warning:")
    if model.k_note:
        st.info(model.k_note, icon=":material/info:")
    from ui import state

    if state.growth_note(ws):
        state.growth_panel(ws, model)


def image_path(ws, ref: str) -> str:
    p = ws.resolve(ref)
    return str(p) if os.path.isfile(p) else ""

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


def accuracy_metric(container, model, ws, label: str = "Accuracy on the evaluation set") -> None:
    """The headline metric; its delta is the change made by the latest edit of this session."""
    last = st.session_state.get("last_edit")
    delta = None
    help_ = None
    if last:
        d = 100 * (last["accuracy"] - last["before"])
        delta = f"{d:+.1f} pts after {last['kind']} ({last['ms']:.0f} ms)"
        help_ = "Re-scored incrementally: only evaluation images whose nearest anchors changed."
    container.metric(label, pct(model.accuracy), delta=delta, help=help_)


def image_path(ws, ref: str) -> str:
    p = ws.resolve(ref)
    return str(p) if os.path.isfile(p) else ""

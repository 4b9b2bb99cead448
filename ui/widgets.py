"""Small drawing helpers: thumbnails, accuracy metrics, pair cards (no computation)."""
from __future__ import annotations

import base64
import io
import os
import time

import streamlit as st


@st.cache_data(show_spinner=False, max_entries=20000)
def thumbnail_url(path: str, size: int = 96, fmt: str = "JPEG") -> str:
    """A small picture of ``path`` (``fmt``: JPEG, or WEBP at about half the bytes) as a data URL
    ('' when the file cannot be read)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format=fmt, quality=80 if fmt == "JPEG" else 60)
        return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a broken thumbnail must not break the page
        return ""


def thumbs(ws, refs, size: int = 96, fmt: str = "JPEG") -> list[str]:
    """Thumbnails (data URLs) of the pictures ``refs`` of ``ws``; '' where one is not a file here."""
    return [thumbnail_url(image_path(ws, r), size, fmt) for r in refs]


def count(n: int, word: str, words: str | None = None) -> str:
    """``n`` and the noun in the right number: "1 pair", "2 pairs", "1,000 photos"."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def pts(delta: float) -> str:
    """A change of accuracy in signed points: ``pts(0.004) == "+0.4 pts"``."""
    return f"{100 * delta:+.1f} pts"


def what_if_sentence(n: int, what) -> str:
    """The one sentence a removal preview reads (Curate, the Map): ``what`` is the
    ``core.live.WhatIf`` of removing ``n`` pairs."""
    return (f"What if {'this pair were' if n == 1 else f'these {n:,} pairs were'} removed: tuning "
            f"{pct(what.before.tune)} → {pct(what.after.tune)} ({pts(what.after.tune - what.before.tune)}); "
            f"test {pct(what.before.test)} → {pct(what.after.test)}. {count(what.n_changed, 'prediction')} "
            "would change.")


def _pts(delta: float | None):
    """A metric delta in points, or None; a change under 0.05 points gets no arrow colour."""
    if delta is None or delta != delta:
        return None, "off"
    return f"{pts(delta)} vs. start", ("off" if abs(delta) < 0.0005 else "normal")


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


@st.cache_resource(show_spinner=False, max_entries=3)
def _built(key: tuple, _build) -> bytes:
    """Bytes of an export, kept server-wide per ``key`` (the workspace and its log position): built
    once, never on a plain visit, and not copied per session."""
    return _build()


def export_button(label: str, key: tuple, build, file_name: str, mime: str, what: str, help: str | None = None) -> None:
    """A download built only on request: "Prepare …" builds it (with a status line saying what is
    being written), then the download button offers the same bytes until ``key`` changes."""
    ready = st.session_state.get(f"export-{label}") == key
    if not ready:
        if st.button(f"Prepare: {label}", key=f"prepare-{label}", icon=":material/build:", width="stretch",
                     help=help):
            with st.status(f"Writing {what}…", expanded=False) as status:
                t0 = time.perf_counter()
                _built(key, build)
                status.update(label=f"{what[:1].upper()}{what[1:]} ready ({time.perf_counter() - t0:.1f} s).",
                              state="complete")
            st.session_state[f"export-{label}"] = key
            ready = True
    if ready:
        st.download_button(label, _built(key, build), file_name=file_name, mime=mime,
                           icon=":material/download:", width="stretch", help=help, key=f"download-{label}")


def page_header(title: str, caption: str) -> None:
    """A page's title and the one-paragraph caption that says what the page is for."""
    st.title(title)
    st.caption(caption)

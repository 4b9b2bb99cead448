"""Plotly figures the pages share (drawing only: the numbers come from ``core``)."""
from __future__ import annotations

import html
from functools import lru_cache

import plotly.graph_objects as go

TUNE, TEST = "#4c78a8", "#f58518"


def _layout(fig: go.Figure, height: int = 300) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=1.12))
    return fig


def per_class_figure(classes, metrics) -> go.Figure:
    """Grouped bars: tuning and test accuracy of each class (``core.live.Metrics``). Building a plotly
    figure costs tens of ms: the same numbers give the same (read-only) figure object."""
    return _per_class(tuple(str(c) for c in classes), tuple(metrics.per_class_tune),
                      tuple(metrics.per_class_test))


@lru_cache(maxsize=64)
def _per_class(classes: tuple, per_class_tune: tuple, per_class_test: tuple) -> go.Figure:
    fig = go.Figure()
    names = [html.escape(str(c)) for c in classes]
    for label, values, colour in (("tuning", per_class_tune, TUNE), ("test (held out)", per_class_test, TEST)):
        fig.add_bar(x=names, y=[None if v is None else 100 * v for v in values], name=label,
                    marker_color=colour, hovertemplate="%{x}: %{y:.1f} %<extra>" + label + "</extra>")
    fig.update_yaxes(title="accuracy (%)", rangemode="tozero")
    return _layout(fig)


def timeline_figure(history: list[dict]) -> go.Figure:
    """Tuning and test accuracy after each edit (``core.store.Workspace.history`` rows); the y-axis
    spans the data (not 0–100) so that changes of a point are visible, and the start is marked.
    The same history gives the same (read-only) figure object."""
    return _timeline(tuple(tuple((k, r.get(k)) for k in ("step", "edit", "note", "tune", "test")) for r in history))


@lru_cache(maxsize=64)
def _timeline(rows: tuple) -> go.Figure:
    history = [dict(r) for r in rows]
    fig = go.Figure()
    steps = [r["step"] for r in history]
    labels = [html.escape(f"{r['edit']}" + (f" — {r['note']}" if r.get("note") else "")) for r in history]
    values = []
    for key, name, colour in (("tune", "tuning", TUNE), ("test", "test (held out)", TEST)):
        ys = [None if r.get(key) is None else 100 * r[key] for r in history]
        values += [y for y in ys if y is not None]
        fig.add_scatter(x=steps, y=ys, mode="lines+markers", name=name, line=dict(color=colour),
                        customdata=labels, connectgaps=False,
                        hovertemplate="step %{x}: %{customdata}<br>%{y:.2f} %<extra>" + name + "</extra>")
    if values:
        lo, hi = min(values), max(values)
        pad = max(0.5, 0.15 * (hi - lo))
        fig.update_yaxes(range=[lo - pad, hi + pad], title="accuracy (%)")
    fig.add_vline(x=0, line_dash="dot", line_color="grey", annotation_text="start", annotation_position="top right")
    fig.update_xaxes(title="edit", dtick=1 if len(steps) <= 20 else None)
    return _layout(fig)


def pairs_map_figure(rows: list[dict]) -> go.Figure:
    """ASIF Fig. 7: each anchor pair near the picture or near a class prompt, at (photo ↔ picture,
    caption ↔ prompt) cosine; marker area = image × text weight. ``rows``: class_name, pair_id,
    image_similarity, caption_similarity, product, caption. No thumbnails: the figure stays small.
    The numbers go in as arrays (plotly checks a list value by value: 0.3 s for 4,700 points) and
    are sent as binary arrays."""
    import numpy as np

    fig = go.Figure()
    top = max((r["product"] for r in rows), default=0.0) or 1.0
    for name in dict.fromkeys(r["class_name"] for r in rows):
        rs = [r for r in rows if r["class_name"] == name]
        col = {k: np.array([r[k] for r in rs], dtype=float)
               for k in ("image_similarity", "caption_similarity", "product", "pair_id")}
        fig.add_scattergl(
            x=col["image_similarity"], y=col["caption_similarity"], mode="markers",
            name=html.escape(str(name)), opacity=0.65,
            marker=dict(size=4 + 26 * np.sqrt(col["product"] / top), line=dict(width=0.5, color="white")),
            customdata=np.column_stack([col["pair_id"], col["product"]]),
            text=[html.escape(str(r["caption"])) for r in rs],
            hovertemplate="pair #%{customdata[0]:d}: %{text}<br>image × text weight "
                          "%{customdata[1]:.4f}<extra>" + html.escape(str(name)) + "</extra>")
    fig.update_xaxes(title="anchor photo ↔ your picture (cosine)")
    fig.update_yaxes(title="anchor caption ↔ class prompt (cosine)")
    return _layout(fig, height=420)


def histogram_figure(values, flags, label_on: str, label_off: str, title: str, bins: int = 40) -> go.Figure:
    """ASIF Fig. 3: density histograms of ``values`` where ``flags`` is true / false, shared bins."""
    import numpy as np

    edges = np.linspace(float(values.min()), float(values.max()) + 1e-6, bins + 1)
    fig = go.Figure()
    for flag, name, colour in ((True, label_on, TEST), (False, label_off, TUNE)):
        v = values[flags == flag]
        if len(v):
            h, _ = np.histogram(v, bins=edges, density=True)
            fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=h, name=html.escape(name), marker_color=colour,
                        opacity=0.6, width=float(edges[1] - edges[0]))
    fig.update_layout(barmode="overlay", bargap=0)
    fig.update_xaxes(title=html.escape(title))
    fig.update_yaxes(title="density")
    return _layout(fig, height=260)

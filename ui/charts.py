"""Plotly figures the pages share (drawing only: the numbers come from ``core``)."""
from __future__ import annotations

import html

import plotly.graph_objects as go

TUNE, TEST = "#4c78a8", "#f58518"


def _layout(fig: go.Figure, height: int = 300) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=1.12))
    return fig


def per_class_figure(classes, metrics) -> go.Figure:
    """Grouped bars: tuning and test accuracy of each class (``core.live.Metrics``)."""
    fig = go.Figure()
    names = [html.escape(str(c)) for c in classes]
    for label, values, colour in (("tuning", metrics.per_class_tune, TUNE), ("test (held out)",
                                                                             metrics.per_class_test, TEST)):
        fig.add_bar(x=names, y=[None if v is None else 100 * v for v in values], name=label,
                    marker_color=colour, hovertemplate="%{x}: %{y:.1f} %<extra>" + label + "</extra>")
    fig.update_yaxes(title="accuracy (%)", rangemode="tozero")
    return _layout(fig)


def timeline_figure(history: list[dict]) -> go.Figure:
    """Tuning and test accuracy after each edit (``core.store.Workspace.history`` rows); the y-axis
    spans the data (not 0–100) so that changes of a point are visible, and the start is marked."""
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

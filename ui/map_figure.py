"""The Map page's figure: a plotly WebGL scatter of anchor pairs (drawing only, no Streamlit), kept
apart so that ``bench/map.py`` times exactly what the page draws."""
from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

#: Colour choices: label -> (column of the pair table, "number" | "category" | "group").
COLOURS = {
    "status (kept / removed / added)": ("status", "category"),
    "influence (accuracy change if removed, pts)": ("influence", "number"),
    "suspicious caption (caption-photo mismatch)": ("mismatch_score", "number"),
    "nearest class (caption vs class prompts)": ("nearest class", "category"),
    "photo near-duplicate group": ("photo_dup_group", "group"),
    "caption near-duplicate group": ("caption_dup_group", "group"),
    "photo outlier score": ("photo_outlier_score", "number"),
    "caption outlier score": ("caption_outlier_score", "number"),
}


def hover(df: pd.DataFrame) -> list[str]:
    """Hover lines; captions are user text, so ``<``, ``>`` and ``&`` are escaped (plotly renders
    a subset of HTML in hover labels)."""
    caps = [html.escape(c if len(c) <= 120 else c[:119] + "…", quote=False) for c in df["caption"]]
    return [f"#{i} · {s}<br>{c}" for i, s, c in zip(df["pair_id"], df["status"], caps)]


def figure(df: pd.DataFrame, xy: np.ndarray, colour: str, highlight: list[int]) -> go.Figure:
    """The WebGL scatter of ``df``'s rows at ``xy`` (rows of the same positions), coloured by ``colour``."""
    column, kind = COLOURS[colour]
    fig = go.Figure()
    common = dict(mode="markers", hovertemplate="%{text}<extra></extra>")
    if column not in df:
        kind, values = "category", pd.Series(["computing…"] * len(df), index=df.index)
    else:
        values = df[column]
    if kind == "number":
        fig.add_trace(go.Scattergl(
            x=xy[:, 0], y=xy[:, 1], customdata=df["pair_id"], text=hover(df), name=colour,
            marker=dict(size=5, color=values.fillna(0), colorscale="RdBu_r" if column == "influence" else "Viridis",
                        colorbar=dict(title=dict(text=column)), opacity=0.8), **common))
    else:
        if kind == "group":
            values = values.map(lambda g: "none" if g < 0 else "in a group")
        for name in sorted(values.unique(), key=lambda v: (v in ("none", "kept"), str(v))):
            m = (values == name).to_numpy()
            sub = df[m]
            fig.add_trace(go.Scattergl(
                x=xy[m, 0], y=xy[m, 1], customdata=sub["pair_id"], text=hover(sub), name=str(name),
                marker=dict(size=5, opacity=0.6 if name in ("none", "kept") else 0.95), **common))
    if highlight:
        m = df["pair_id"].isin(highlight).to_numpy()
        if m.any():
            fig.add_trace(go.Scattergl(
                x=xy[m, 0], y=xy[m, 1], customdata=df["pair_id"][m], text=hover(df[m]),
                name="anchors behind the Classify picture",
                marker=dict(size=12, symbol="star", color="gold", line=dict(width=1, color="black")),
                **common))
    fig.update_layout(height=620, margin=dict(l=0, r=0, t=10, b=0), dragmode="lasso",
                      legend=dict(orientation="h", y=-0.05), uirevision="map")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return fig

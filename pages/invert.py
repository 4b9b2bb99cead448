"""Invert (lab): turn a picture into words with OTI — through our small contrastive model or into the
ASIF space — watch the loss fall, see the nearest words and captions, and look at the modality gap.
All computation is in ``core.inversion`` / ``core.gap`` / ``core.modality``.

The page is one entry call, :func:`main`: the model card, then two fragments (inverting a picture,
the modality gap), each rerun alone by its own inputs and buttons.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import boot

boot.ensure_app()

from core import modality as M  # noqa: E402
from core.embedded import embed  # noqa: E402
from ui import state  # noqa: E402
from ui.safe import plain  # noqa: E402
from ui.widgets import page_header  # noqa: E402

METHOD_LIT = "Our contrastive model (LiT: EfficientNet-Lite0 + MiniLM, trained heads)"
METHOD_ASIF = "Into the ASIF space (MiniLM tokens, Flickr8k anchors, no training)"


def _demo_images() -> int:
    """Flickr8k pictures (with all their captions) used as picker, caption bank and anchors
    (``ROSETTA_INVERT_IMAGES``, default 2,000)."""
    return int(os.environ.get("ROSETTA_INVERT_IMAGES", 2000))


def _settings() -> dict:
    """k, p and encoders of the current workspace, falling back to the defaults of core.asif."""
    from core.asif import DEFAULT_K, DEFAULT_P

    out = {"image_encoder": M.IMAGE_ENCODER, "text_encoder": M.TEXT_ENCODER, "k": DEFAULT_K, "p": DEFAULT_P}
    try:
        ws = state.current_workspace()
        if ws is not None:
            s = ws.settings()
            out.update({k: s[k] for k in ("image_encoder", "text_encoder", "k", "p") if k in s})
    except Exception:  # noqa: BLE001 - the lab also works without a workspace (demo data)
        pass
    return out


@st.cache_resource(show_spinner=False)
def _model():
    heads, meta = M.get_model(train_if_missing=False)
    return heads, meta


@st.cache_resource(show_spinner=False)
def _flickr(image_encoder: str, text_encoder: str, n_images: int | None):
    """The demo pairs, embedded (:class:`core.embedded.EmbeddedPairs`)."""
    return M.flickr_embedded(n_images, image_encoder, text_encoder, cache=state.embedding_cache())


def _trained_model() -> tuple:
    """Our trained heads and their metadata, or ``(None, {})`` before they are trained."""
    try:
        return _model()
    except ValueError:
        return None, {}


def _train_model() -> None:
    bar = st.progress(0.0, text="Training the heads on the Flickr8k pairs…")
    M.train_on_flickr(progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Training step {d}/{t}"),
                      save_to=M.DEFAULT_HEADS, cache=state.embedding_cache())
    _model.clear()
    bar.empty()


# ------------------------------------------------------------------------------------- the model
def _model_summary(left, right, meta: dict) -> None:
    tr = meta.get("training", {})
    zs = meta.get("cifar10_zero_shot", {})
    left.markdown(
        f"**Our model**: frozen EfficientNet-Lite0 and MiniLM, two linear heads + temperature trained "
        f"contrastively on {tr.get('n_pairs', '?'):,} Flickr8k pairs ({tr.get('steps', '?')} steps, "
        f"final loss {tr.get('final_loss', float('nan')):.3f}).")
    if zs:
        c1, c2 = right.columns(2)
        c1.metric("CIFAR-10 zero-shot", f"{100 * zs['ours']['accuracy']:.1f}%", help="our trained heads")
        c2.metric("ASIF, same data", f"{100 * zs['asif_same_pairs_and_encoders']['accuracy']:.1f}%",
                  help="no training: the same pairs and encoders as anchors")


def model_card(heads, meta: dict) -> None:
    """Our contrastive model: what it is and how it scores, or a button to train it."""
    with st.container(border=True):
        left, right = st.columns([2, 1])
        if heads is not None:
            _model_summary(left, right, meta)
            return
        left.warning("Our contrastive model is not trained yet (it trains in a few CPU minutes on the "
                     "Flickr8k pairs from the shared cache).")
        if right.button("Train it now", type="primary", key="invert_train"):
            try:
                _train_model()
                st.rerun()
            except ValueError as error:
                st.error(plain(error))


# ----------------------------------------------------------------------------------- invert one
def _inputs(pairs, heads) -> dict:
    """The method, the picture (a demo picture or an upload), steps and seed, and the Invert click."""
    methods = ([METHOD_LIT] if heads is not None else []) + [METHOD_ASIF]
    method = st.radio("Invert through", methods, key="invert_method")
    source = st.radio("Picture", ["Flickr8k picture", "Upload"], horizontal=True, key="invert_source")
    upload, image_index = None, None
    if source == "Upload":
        upload = st.file_uploader("An image", type=["jpg", "jpeg", "png", "webp", "bmp"], key="invert_upload")
    else:
        image_index = int(st.number_input("Picture number", 0, len(pairs.images) - 1, 0, key="invert_index"))
        st.image(pairs.images[image_index], width=224)
        st.caption(" · ".join(plain(pairs.captions[i]) for i in pairs.pairs_of_image(image_index)[:2]))
    if upload is not None:
        st.image(upload, width=224)
    s1, s2 = st.columns(2)
    steps = int(s1.number_input("Steps", 10, 1000, 150, step=10, key="invert_steps"))
    seed = int(s2.number_input("Seed", 0, 10_000, 0, key="invert_seed"))
    go_button = st.button("Invert", type="primary", key="invert_go",
                          disabled=source == "Upload" and upload is None)
    return {"method": method, "upload": upload, "image_index": image_index, "steps": steps, "seed": seed,
            "go": go_button}


def _curve_figure(values: list[float], total: int) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(range(1, len(values) + 1)), y=values, mode="lines", name="loss"))
    fig.update_layout(title="OTI loss (1 − cosine to the target)", xaxis_title="step", yaxis_title="loss",
                      xaxis_range=[0, total], height=300, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def _oti(inp: dict, feats: np.ndarray, pairs, heads, settings: dict, on_loss) -> dict:
    """Run OTI by the chosen method; the result with the text encoder and caption bank to read it."""
    cache = state.embedding_cache()
    if inp["method"] == METHOD_LIT:
        result = M.oti_lit(heads, feats, steps=inp["steps"], seed=inp["seed"], on_loss=on_loss, cache=cache)
        bank = heads.encode_text_features(pairs.text_vectors)
        return {"result": result, "encoder": M.lit_text_encoder(heads, cache=cache), "bank": bank,
                "native": M.nearest_texts(heads.encode_image_features(feats), bank, pairs.captions, 8)[0]}
    anchors = np.arange(len(pairs))
    if inp["image_index"] is not None:  # the picture's own pairs are not anchors
        anchors = anchors[pairs.pair_image != inp["image_index"]]
    # at most half the anchors, as store.default_k gives a small workspace
    k = min(int(settings["k"]), max(1, len(anchors) // 2))
    result = M.asif_oti(feats, pairs.pair_image_vectors[anchors], pairs.text_vectors[anchors], k,
                        float(settings["p"]), steps=inp["steps"], seed=inp["seed"], on_loss=on_loss,
                        cache=cache)
    return {"result": result, "encoder": M.minilm_tokens(cache), "bank": pairs.text_vectors, "native": None}


def _run_inversion(inp: dict, pairs, heads, settings: dict, chart, status) -> None:
    """Invert the chosen picture, drawing the loss as it falls; the outcome goes to session state."""
    if inp["upload"] is not None:
        embedded = embed(M.IMAGE_ENCODER, [inp["upload"].getvalue()], cache=state.embedding_cache())
        if embedded.failed:
            st.error("That picture could not be read; try a JPEG or PNG file.")
            return
        feats = embedded.vectors
    else:
        feats = pairs.image_vectors[[inp["image_index"]]]
    losses: list[float] = []
    steps = inp["steps"]

    def on_loss(step: int, value: float) -> None:
        losses.append(value)
        if step % 5 == 0 or step == steps - 1:
            chart.plotly_chart(_curve_figure(losses, steps), key=f"invert_live_{step}")
            status.caption(f"step {step + 1}/{steps} · loss {value:.4f}")

    try:
        out = _oti(inp, feats, pairs, heads, settings, on_loss)
    except ValueError as error:
        st.error(plain(error))
        return
    from core.inversion import nearest_vocabulary

    result = out["result"]
    st.session_state["invert_result"] = {
        "method": inp["method"], "losses": result.losses.tolist(), "seconds": result.seconds,
        "words": nearest_vocabulary(out["encoder"], result.pseudo[0], 12)[0],
        "captions": M.nearest_texts(result.features, out["bank"], pairs.captions, 8)[0],
        "native": out["native"], "steps": steps}


def _result(res: dict, chart, status) -> None:
    """The last inversion: its loss curve, the nearest words and the nearest captions."""
    chart.plotly_chart(_curve_figure(res["losses"], res["steps"]), key="invert_final_curve")
    status.caption(f"{res['method'].split(' (')[0]} · {res['steps']} steps in {res['seconds']:.1f} s · "
                   f"final loss {res['losses'][-1]:.4f}")
    w1, w2 = st.columns([1, 2], gap="large")
    with w1:
        st.markdown("**Nearest words** to the learned token")
        st.dataframe(pd.DataFrame(res["words"], columns=["word", "cosine"]).round(3), hide_index=True,
                     key="invert_words")
    with w2:
        st.markdown("**Nearest Flickr8k captions** to “a photo of ⟨word⟩”")
        st.dataframe(pd.DataFrame(res["captions"], columns=["caption", "cosine"]).round(3), hide_index=True,
                     key="invert_captions")
        if res["native"]:
            st.markdown("…and to the picture itself (image → text, no inversion)")
            st.dataframe(pd.DataFrame(res["native"], columns=["caption", "cosine"]).round(3), hide_index=True,
                         key="invert_native")


@st.fragment
def invert_section(pairs, heads, settings: dict) -> None:
    """Step 1: pick a picture, invert it into a pseudo-token, read what the text side understood."""
    c1, c2 = st.columns([1, 1.6], gap="large")
    with c1:
        inp = _inputs(pairs, heads)
    with c2:
        chart, status = st.empty(), st.empty()
    if inp["go"]:
        _run_inversion(inp, pairs, heads, settings, chart, status)
    res = st.session_state.get("invert_result")
    if res:
        _result(res, chart, status)


# ------------------------------------------------------------------------------------ the gap
@st.cache_data(show_spinner=False, max_entries=6)
def _gap(space: str, image_encoder: str, text_encoder: str, k: int, p: float, n: int, n_images: int):
    one = _flickr(image_encoder, text_encoder, n_images).one_caption_per_image()
    if space.startswith("Our"):
        pick = np.sort(np.random.default_rng(0).choice(len(one), size=min(n, len(one)), replace=False))
        heads, _ = _model()
        return M.lit_space_gap(heads, one.pair_image_vectors[pick], one.text_vectors[pick])
    return M.asif_space_gap(one.pair_image_vectors, one.text_vectors, k, p, n_queries=n)


def _gap_figure(distributions: dict) -> go.Figure:
    from core.gap import histograms

    h = histograms(distributions, bins=60)
    fig = go.Figure()
    for name, dens in h["density"].items():
        fig.add_trace(go.Scatter(x=h["centers"], y=dens, mode="lines", name=name, fill="tozeroy", opacity=0.5))
    fig.update_layout(title="Cosine similarity distributions", xaxis_title="cosine similarity",
                      yaxis_title="density", height=340, margin=dict(l=10, r=10, t=50, b=10))
    return fig


@st.fragment
def gap_section(heads, settings: dict) -> None:
    """Step 2: how far apart pictures and captions live, in our space or the ASIF space."""
    st.subheader("2 · The modality gap")
    st.caption("Pictures and captions embedded by a contrastive model sit in two separate cones: the "
               "distance between their centroids is the **gap**. Matched picture–caption pairs are more "
               "similar than unmatched ones, yet picture–picture similarities sit on a different scale. "
               "In the ASIF space the two sides are compared through their similarities to anchor pairs.")
    space = st.radio("Space", (["Our model's shared space"] if heads is not None else [])
                     + [f"ASIF space of the current encoders ({settings['image_encoder']} + "
                        f"{settings['text_encoder']})"], horizontal=True, key="invert_gap_space")
    n_gap = int(st.number_input("Pairs (one caption per image)", 100, 2000, 500, step=100, key="invert_gap_n"))
    if not (st.button("Show the gap", key="invert_gap_go") or st.session_state.get("invert_gap_shown")):
        return
    st.session_state["invert_gap_shown"] = True
    ours = space.startswith("Our")
    with st.spinner("Embedding and comparing…"):
        try:
            out = _gap(space, M.IMAGE_ENCODER if ours else settings["image_encoder"],
                       M.TEXT_ENCODER if ours else settings["text_encoder"],
                       int(settings["k"]), float(settings["p"]), n_gap, _demo_images())
        except ValueError as error:
            st.error(plain(error))
            return
    g = out["gap"]
    m1, m2, m3 = st.columns(3)
    m1.metric("Gap ‖μ_image − μ_text‖", f"{g['gap']:.3f}")
    m2.metric("Centroid cosine", f"{g['centroid_cosine']:.3f}")
    m3.metric("Matched pair cosine", f"{g.get('matched_cosine', float('nan')):.3f}")
    st.plotly_chart(_gap_figure(out["distributions"]), key="invert_gap_hist")


def main() -> None:
    page_header("Invert", (
        "**Modality inversion** learns one made-up word (a *pseudo-token*) so that the text encoder reads "
        "“a photo of ⟨word⟩” the way the image encoder sees a picture — both encoders frozen, only the word "
        "is optimised (OTI, *Cross the Gap*, ICLR 2025). Its nearest real words and captions show what the "
        "text side understood. The **modality gap** view shows how far apart pictures and captions live."))
    settings = _settings()
    heads, meta = _trained_model()
    model_card(heads, meta)
    st.subheader("1 · Pick a picture and invert it")
    try:
        pairs = _flickr(M.IMAGE_ENCODER, M.TEXT_ENCODER, _demo_images())
    except ValueError as error:
        st.error(f"The demo pairs are not available: {plain(error)}")
        return
    invert_section(pairs, heads, settings)
    gap_section(heads, settings)


main()

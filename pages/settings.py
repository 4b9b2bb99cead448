"""Settings: encoders, k, p, prompt templates and classes of the current workspace."""
from __future__ import annotations

import streamlit as st

from ui import boot

boot.ensure_app()

import time

from core import encoders, store
from core.embedded import embed
from ui import state
from ui.ann_panel import ann_panel
from ui.safe import plain

st.title("Settings")
st.caption("How the model is built from the pairs. Changing a setting recomputes the model; "
           "embeddings already computed are read from the cache, never recomputed.")

ws = state.require_workspace()
s = ws.settings()
n_pairs = ws.counts()["pairs"]


def _options(modality: str, current: str) -> list[str]:
    names = [e["name"] for e in encoders.list_encoders(modality) if e["available"]]
    if current not in names:
        names.append(current)
    return names


#: items embedded to measure an encoder's speed before a long recompute (they stay cached)
RATE_SAMPLE = 8


def _estimate(changes: dict) -> str | None:
    """A sentence with the embeddings an encoder change must compute (counted with the cache, never
    computed) and how long that takes at a speed measured now on a few of them; ``None`` when
    everything is cached."""
    cache = state.embedding_cache()
    todo = []
    if changes["image_encoder"] != s["image_encoder"]:
        refs = list(dict.fromkeys([p.image for p in ws.all_pairs()] + [e.image for e in ws.eval_items()]))
        todo.append(("picture", changes["image_encoder"], [str(ws.resolve(r)) for r in refs]))
    if changes["text_encoder"] != s["text_encoder"]:
        todo.append(("caption", changes["text_encoder"], list(dict.fromkeys(p.caption for p in ws.all_pairs()))))
    parts, seconds = [], 0.0
    for noun, name, items in todo:
        missing = embed(name, items, cache=cache, compute=False).missing
        if missing.size == 0:
            continue
        cache.encoders.get(name)  # load the model first: the speed is that of embedding alone
        sample = [items[i] for i in missing[:RATE_SAMPLE]]
        t0 = time.perf_counter()
        embed(name, sample, cache=cache)
        rate = len(sample) / max(time.perf_counter() - t0, 1e-6)
        seconds += (missing.size - len(sample)) / rate
        parts.append(f"{missing.size:,} of {len(items):,} {noun}s ({rate:,.1f} per second measured just now)")
    if not parts:
        return None
    took = f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{max(seconds, 1):.0f} seconds"
    return (f"This change embeds {' and '.join(parts)} that are not in the cache yet: about {took} "
            "on this machine before the model is ready. Everything else is read from the cache.")


def _apply(changes: dict) -> None:
    try:
        ws.update_settings(**changes)
        st.session_state.pop("query", None)
        st.session_state.pop("last_edit", None)
        st.success("Saved. The model is being recomputed (cached embeddings are reused).")
    except ValueError as exc:
        st.error(plain(exc))


with st.form("settings"):
    a, b = st.columns(2)
    img_opts = _options("image", s["image_encoder"])
    txt_opts = _options("text", s["text_encoder"])
    image_encoder = a.selectbox("Image encoder", img_opts, index=img_opts.index(s["image_encoder"]))
    text_encoder = b.selectbox("Text encoder", txt_opts, index=txt_opts.index(s["text_encoder"]))
    custom = st.text_input("…or another encoder name (e.g. open_clip:ViT-B-32:<checkpoint>:image, "
                           "st:<sentence-transformers model>)", "",
                           help="Needs the weights on this machine or internet access.")
    c, d = st.columns(2)
    k = c.number_input("k — nearest anchors kept per item", min_value=1, value=int(s["k"]), step=10,
                       help=f"At most the number of anchor pairs ({n_pairs:,}).")
    p = d.number_input("p — sharpening exponent", min_value=store.P_RANGE[0], max_value=store.P_RANGE[1],
                       value=float(s["p"]), step=1.0, help="From 1 to 64; larger values overflow.")
    e, f = st.columns(2)
    tune_fraction = e.number_input("Tuning part of the labeled pictures", min_value=0.05, max_value=0.95,
                                   value=float(s["tune_fraction"]), step=0.05,
                                   help="Choices (influence, previews, auto-curation) read only the "
                                        "tuning part; the rest is the held-out test part.")
    split_seed = f.number_input("Split seed", min_value=0, value=int(s["split_seed"]), step=1)
    templates = st.text_area("Prompt templates, one per line ({} is the class name)",
                             "\n".join(s["templates"]), height=140)
    classes = st.text_area("Classes, one per line", "\n".join(s["classes"]), height=160)
    if st.form_submit_button("Apply and recompute", type="primary"):
        st.session_state.pop("settings_pending", None)
        changes = {"image_encoder": image_encoder, "text_encoder": text_encoder, "k": int(k), "p": p,
                   "templates": templates.splitlines(), "classes": classes.splitlines(),
                   "tune_fraction": tune_fraction, "split_seed": int(split_seed)}
        error = None
        if custom.strip():
            try:
                enc = encoders.get_encoder(custom.strip())
                changes["image_encoder" if enc.modality == "image" else "text_encoder"] = custom.strip()
            except Exception:  # noqa: BLE001 - shown as a message
                error = "That encoder name is not usable here (unknown, or its weights are not on this machine)."
        if error:
            st.error(plain(error))
        elif changes["image_encoder"] != s["image_encoder"] or changes["text_encoder"] != s["text_encoder"]:
            with st.spinner("Counting what the new encoder must embed…"):
                try:
                    note = _estimate(changes)
                except Exception:  # noqa: BLE001 - e.g. the weights are missing: said once, nothing lost
                    note = None
                    error = "That encoder cannot be loaded here (its weights are not on this machine)."
                    st.error(error)
            if note:
                st.session_state["settings_pending"] = (changes, note)
            elif not error:
                _apply(changes)
        else:
            _apply(changes)

pending = st.session_state.get("settings_pending")
if pending:
    st.warning(plain(pending[1]), icon=":material/schedule:")
    y, n = st.columns(2)
    if y.button("Recompute anyway", type="primary", key="settings_confirm"):
        st.session_state.pop("settings_pending")
        _apply(pending[0])
    if n.button("Cancel", key="settings_cancel"):
        st.session_state.pop("settings_pending")
        st.rerun()


def _status() -> None:
    """The model's state under the saved settings."""
    job = state.model_job(ws)
    if not job.done:
        st.progress(min(max(job.fraction, 0.0), 1.0),
                    text=f"Recomputing: {job.message} ({time.time() - job.started:.0f} s)")
    elif job.error:
        st.error(f"The model could not be built with these settings: {plain(job.error)}")
    else:
        m = job.model.metrics()
        st.success(f"Model ready: test accuracy {100 * m.test:.1f} % (tuning {100 * m.tune:.1f} %) with "
                   f"{m.n_anchors:,} anchor pairs, k = {m.k:,}.")


@st.fragment(run_every=1.0)
def _status_live() -> None:
    """:func:`_status` every second while the model is computed; the page redraws once it is done."""
    if state.model_job(ws).done:
        st.rerun()
    _status()


if state.model_job(ws).done:
    _status()
else:
    _status_live()

ann_panel(ws)

with st.expander("Encoders on this machine"):
    st.dataframe(encoders.list_encoders(), hide_index=True, width="stretch")

"""Settings: encoders, k, p, prompt templates and classes of the current workspace.

The page is one entry call, :func:`main`, which draws :data:`SECTIONS` in order; a new panel is one
more function ``(ws) -> None`` in that list. The model's status is a fragment that follows a
recompute every second, so the page itself shows when the model is ready.
"""
from __future__ import annotations

import time

import streamlit as st

from ui import boot

boot.ensure_app()

from core import encoders, store
from core.embedded import embed
from ui import state
from ui.ann_panel import ann_panel
from ui.safe import plain
from ui.widgets import page_header

#: items embedded to measure an encoder's speed before a long recompute (they stay cached)
RATE_SAMPLE = 8


def _options(modality: str, current: str) -> list[str]:
    names = [e["name"] for e in encoders.list_encoders(modality) if e["available"]]
    if current not in names:
        names.append(current)
    return names


def _to_embed(ws, s: dict, changes: dict) -> list[tuple[str, str, list[str]]]:
    """(noun, encoder, items) for each encoder the change replaces: what the new one must read."""
    todo = []
    if changes["image_encoder"] != s["image_encoder"]:
        refs = list(dict.fromkeys([p.image for p in ws.all_pairs()] + [e.image for e in ws.eval_items()]))
        todo.append(("picture", changes["image_encoder"], [str(ws.resolve(r)) for r in refs]))
    if changes["text_encoder"] != s["text_encoder"]:
        todo.append(("caption", changes["text_encoder"], list(dict.fromkeys(p.caption for p in ws.all_pairs()))))
    return todo


def _estimate(ws, s: dict, changes: dict) -> str | None:
    """A sentence with the embeddings an encoder change must compute (counted with the cache, never
    computed) and how long that takes at a speed measured now on a few of them; ``None`` when
    everything is cached."""
    cache = state.embedding_cache()
    parts, seconds = [], 0.0
    for noun, name, items in _to_embed(ws, s, changes):
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


def _apply(ws, changes: dict) -> None:
    try:
        ws.update_settings(**changes)
        st.session_state.pop("query", None)
        st.session_state.pop("last_edit", None)
        st.success("Saved. The model is being recomputed (cached embeddings are reused).")
    except ValueError as exc:
        st.error(plain(exc))


def _form(s: dict, n_pairs: int) -> tuple[dict, str] | None:
    """The settings form; on submit, the changes and the custom encoder name typed (maybe '')."""
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
    if not st.form_submit_button("Apply and recompute", type="primary"):
        return None
    return ({"image_encoder": image_encoder, "text_encoder": text_encoder, "k": int(k), "p": p,
             "templates": templates.splitlines(), "classes": classes.splitlines(),
             "tune_fraction": tune_fraction, "split_seed": int(split_seed)}, custom.strip())


def _with_custom(changes: dict, custom: str) -> str | None:
    """Put a typed encoder name in ``changes`` (on its modality's side); an error sentence if unusable."""
    if not custom:
        return None
    try:
        enc = encoders.get_encoder(custom)
    except Exception:  # noqa: BLE001 - shown as a message
        return "That encoder name is not usable here (unknown, or its weights are not on this machine)."
    changes["image_encoder" if enc.modality == "image" else "text_encoder"] = custom
    return None


def _submit(ws, s: dict, changes: dict, custom: str) -> None:
    """Apply the changes, unless a new encoder must embed much first: then ask (``settings_pending``)."""
    st.session_state.pop("settings_pending", None)
    error = _with_custom(changes, custom)
    if error:
        st.error(plain(error))
        return
    if changes["image_encoder"] == s["image_encoder"] and changes["text_encoder"] == s["text_encoder"]:
        _apply(ws, changes)
        return
    with st.spinner("Counting what the new encoder must embed…"):
        try:
            note = _estimate(ws, s, changes)
        except Exception:  # noqa: BLE001 - e.g. the weights are missing: said once, nothing lost
            st.error("That encoder cannot be loaded here (its weights are not on this machine).")
            return
    if note:
        st.session_state["settings_pending"] = (changes, note, str(ws.path))
    else:
        _apply(ws, changes)


def settings_form(ws) -> None:
    """Encoders, k, p, the tuning/test split, templates and classes, applied together."""
    s = ws.settings()
    with st.form("settings"):
        submitted = _form(s, ws.counts()["pairs"])
        if submitted is not None:
            _submit(ws, s, *submitted)


def pending_change(ws) -> None:
    """An encoder change waiting for confirmation, with what it will cost."""
    pending = st.session_state.get("settings_pending")
    if not pending:
        return
    if pending[2] != str(ws.path):   # asked in another workspace: never applied to this one
        st.session_state.pop("settings_pending")
        return
    st.warning(plain(pending[1]), icon=":material/schedule:")
    y, n = st.columns(2)
    if y.button("Recompute anyway", type="primary", key="settings_confirm"):
        st.session_state.pop("settings_pending")
        _apply(ws, pending[0])
    if n.button("Cancel", key="settings_cancel"):
        st.session_state.pop("settings_pending")
        st.rerun()


def _status(ws) -> None:
    """The model's state under the saved settings."""
    job = state.model_job(ws)
    if not job.done:
        st.progress(min(max(job.fraction, 0.0), 1.0),
                    text=f"Recomputing: {plain(job.message)} ({time.time() - job.started:.0f} s)")
    elif job.error:
        st.error(f"The model could not be built with these settings: {plain(job.error)}")
    else:
        m = job.model.metrics()
        st.success(f"Model ready: test accuracy {100 * m.test:.1f} % (tuning {100 * m.tune:.1f} %) with "
                   f"{m.n_anchors:,} anchor pairs, k = {m.k:,}.")


@st.fragment(run_every=1.0)
def _status_live(ws) -> None:
    """:func:`_status` every second while the model is computed; the page redraws once it is done."""
    if state.model_job(ws).done:
        st.rerun()
    _status(ws)


def model_status(ws) -> None:
    """The model under the saved settings: ready (with its accuracy), failed, or its progress."""
    if state.model_job(ws).done:
        _status(ws)
    else:
        _status_live(ws)


def encoders_list(ws) -> None:
    """Every encoder this machine knows, and whether its weights are here."""
    with st.expander("Encoders on this machine"):
        st.dataframe(encoders.list_encoders(), hide_index=True, width="stretch")


#: the page's sections, drawn in this order under the header; each is ``(ws) -> None``
SECTIONS = (settings_form, pending_change, model_status, ann_panel, encoders_list)


def main() -> None:
    page_header("Settings", "How the model is built from the pairs. Changing a setting recomputes the model; "
                            "embeddings already computed are read from the cache, never recomputed.")
    ws = state.require_workspace()
    for section in SECTIONS:
        section(ws)


main()

"""The Curate page's automatic curation: auto-curate (greedy influence-guided pruning chosen on the
tuning part) and suggested in-domain additions. Streamlit glue only: the work is
:func:`core.curation.auto_curate` and :func:`core.curation.suggest_additions`; every edit goes through
``ui.state.remove_pairs`` / ``ui.state.add_pairs`` (one transaction, one undo each)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ui import state
from ui.safe import plain
from ui.widgets import count, pct, pts

RUN_KEY = "auto_curate_last"
PLAN_KEY = "addition_plan"


def auto_curate_panel(ws, model) -> None:
    """Auto-curate and suggested additions for the live ``model`` (:class:`core.live.LiveModel`) of
    workspace ``ws``; ``model.is_tune`` (bool ``[Q]``) is the tuning part of the labeled pictures."""
    tune = np.asarray(model.is_tune, dtype=bool)
    st.subheader("Auto-curate")
    if tune.all() or not tune.any():
        st.info("Automatic curation needs the labeled pictures split into a tuning and a test part "
                "(see Settings).")
        return
    from core.curation import STOP_RULE

    st.caption("Removes, round by round, the pairs whose removal helps the **tuning** pictures most "
               "(exact leave-one-out), re-measuring after every round. The **test** pictures are "
               "never looked at while choosing: their accuracy is the honest figure. Each round is "
               "one edit, so one undo reverts one round.")
    with st.expander("Stopping rule"):
        st.text(STOP_RULE)
    with st.form("auto_curate_form"):
        c1, c2, c3 = st.columns(3)
        most = max(0, model.n_anchors - model.session.k)
        budget = c1.number_input("Most pairs to remove", 0, most, min(500, most), step=50, key="ac_budget")
        per_round = c2.number_input("Pairs per round", 1, 1000, 50, step=10, key="ac_per_round")
        holdout = c3.number_input("Share of tuning held back to decide when to stop", 0.1, 0.5, 0.3,
                                  step=0.05, format="%.2f", key="ac_holdout")
        go = st.form_submit_button("Run auto-curate", type="primary", icon=":material/auto_fix_high:")
    if go:
        _run_auto_curate(ws, model, tune, int(budget), int(per_round), float(holdout))
    _show_last_run()
    st.divider()
    suggest_additions_panel(ws, model, tune)


def _run_auto_curate(ws, model, tune, budget: int, per_round: int, holdout: float) -> None:
    from core.curation import auto_curate

    session = model.session
    run = {"tune_before": session.accuracy_on(tune), "test_before": session.accuracy_on(~tune),
           "rounds": 0, "removed": 0, "stopped_because": "stopped by you", "done": False}
    st.session_state[RUN_KEY] = run
    bar = st.progress(0.0, text="Starting auto-curation…")
    st.button("Stop after this step", key="auto_curate_stop", icon=":material/stop:",
              help="Rounds already applied stay applied; each is one undoable edit.")

    def apply(pair_ids):
        result = state.remove_pairs(ws, model, [int(i) for i in pair_ids],
                                    note=f"auto-curate round {run['rounds'] + 1}", where="auto-curate")
        run["rounds"] += 1
        run["removed"] += len(pair_ids)
        run["tune_after"], run["test_after"] = session.accuracy_on(tune), session.accuracy_on(~tune)
        return result

    # Streamlit stops this script run at the next progress update when "Stop" is clicked: the
    # rounds applied so far are committed (each in its own transaction) and recorded in ``run``.
    with model.lock:
        report = auto_curate(session, tune, max_removals=budget, per_round=per_round,
                             holdout_fraction=holdout, seed=0, apply_remove=apply,
                             progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=m))
    run.update(stopped_because=report.stopped_because, done=True,
               tune_after=session.accuracy_on(tune), test_after=session.accuracy_on(~tune))
    st.rerun()


def _show_last_run() -> None:
    run = st.session_state.get(RUN_KEY)
    if not run:
        return
    after_tune = run.get("tune_after", run["tune_before"])
    after_test = run.get("test_after", run["test_before"])
    c1, c2, c3 = st.columns(3)
    c1.metric("Tuning accuracy (chooses)", pct(after_tune), pts(after_tune - run["tune_before"]))
    c2.metric("Test accuracy (held out, honest)", pct(after_test), pts(after_test - run["test_before"]))
    c3.metric("Pairs removed", f"{run['removed']:,}", count(run["rounds"], "round"), delta_color="off")
    st.caption(f"Last auto-curation: tuning {pct(run['tune_before'])} → {pct(after_tune)}, test "
               f"{pct(run['test_before'])} → {pct(after_test)}; stopped because "
               f"{run['stopped_because']}.")


# ------------------------------------------------------------------------------- additions

@st.cache_resource(show_spinner="Embedding the CIFAR-10 training pictures (once)…", max_entries=4)
def _pool(folder: str, per_class: int, image_encoder: str, _cache):
    """The first ``per_class`` pictures of each class of the pool folder, embedded
    (:class:`core.embedded.EmbeddedLabeled`) through the cache."""
    from core.data import load_labeled
    from core.embedded import EmbeddedLabeled

    return EmbeddedLabeled.from_labeled(load_labeled(folder, limit_per_class=per_class), image_encoder,
                                        cache=_cache)


def _pool_folder():
    """``(data root, its cifar10/train folder)``, or ``(root, None)`` when there is no such folder."""
    from core.data import data_dir

    root = data_dir(required=False)
    folder = None if root is None else root / "cifar10" / "train"
    return (root, folder) if folder is not None and folder.is_dir() else (root, None)


def suggest_additions_panel(ws, model, tune) -> None:
    """Propose in-domain pairs for the classes the tuning part gets wrong; accept all or some."""
    from core.asif import fill_template
    from core.curation import suggest_additions
    from core.embedded import embed

    st.subheader("Suggest additions")
    root, folder = _pool_folder()
    if folder is None:
        st.caption("The CIFAR-10 training pictures are not in the demo data folder, so there is no pool "
                   "to propose pairs from.")
        return
    v = model.vectors
    st.caption("Proposes CIFAR-10 training pictures for the classes with the lowest **tuning** "
               "accuracy (shares in proportion to their wrong tuning pictures), each captioned with "
               "the class prompt. Accepting adds them as one edit.")
    c1, c2, c3 = st.columns([1, 1, 1])
    n = c1.number_input("Pairs to propose", 1, 500, 50, step=10, key="suggest_n")
    per_class = c2.number_input("Pool: training pictures per class", 1, 500, 100, step=50, key="suggest_pool",
                                help="The first N CIFAR-10 training pictures of each class (500 = all); "
                                     "each is embedded once.")
    c3.write("")
    if c3.button("Suggest pairs", icon=":material/lightbulb:", key="suggest_go"):
        pool = _pool(str(folder), int(per_class), v.image_encoder, v.cache)
        if list(pool.class_names) != list(v.classes):
            st.warning("The pool's classes differ from this workspace's classes; nothing to propose.")
            return
        captions = [fill_template(v.templates[0], c) for c in v.classes]
        caption_vecs = embed(v.text_encoder, captions, cache=v.cache).vectors
        known = {p.image for p in ws.all_pairs()}
        refs = [f"demo:{Path(p).relative_to(root).as_posix()}" for p in pool.paths]
        exclude = [i for i, r in enumerate(refs) if r in known]
        with model.lock:
            plan = suggest_additions(model.session, pool.vectors, pool.labels, caption_vecs, captions, tune,
                                     int(n), exclude=exclude)
        st.session_state[PLAN_KEY] = {
            "version": model.stamp, "tune_before": plan.tune_before,
            "tune_if_accepted": plan.tune_if_accepted,
            "rows": [{"add": True, "ref": refs[s.pool_index], "class": s.class_name, "caption": s.caption,
                      "covers": s.covers} for s in plan.suggestions]}
    plan = st.session_state.get(PLAN_KEY)
    if not plan:
        return
    if not plan["rows"]:
        st.info("Nothing to propose: every tuning picture is classified correctly, or the pool is used up.")
        return
    if plan["version"] != model.stamp:
        st.caption("The model changed since these were proposed; suggest again for fresh numbers.")
    st.info(f"If all {len(plan['rows'])} were added: tuning accuracy {pct(plan['tune_before'])} → "
            f"**{pct(plan['tune_if_accepted'])}** (a what-if; the test part is not used to choose).")
    from ui.widgets import image_path, thumbnail_url

    df = pd.DataFrame(plan["rows"])
    df.insert(1, "photo", [thumbnail_url(image_path(ws, r), 64) for r in df["ref"]])
    edited = st.data_editor(
        df.drop(columns=["ref"]), hide_index=True, key="addition_editor", disabled=["photo", "class",
                                                                                 "caption", "covers"],
        column_config={"add": st.column_config.CheckboxColumn("add"),
                       "photo": st.column_config.ImageColumn("photo", width="small"),
                       "covers": st.column_config.NumberColumn(
                           "covers", help="Wrong tuning pictures of its class for which it is the "
                                          "nearest proposed pool picture")})
    chosen = [i for i, keep in enumerate(edited["add"].tolist()) if keep]
    if st.button(f"Add {count(len(chosen), 'checked pair', 'checked pairs')}", type="primary", disabled=not chosen,
                 icon=":material/add:", key="add_suggested"):
        pairs = [(plan["rows"][i]["ref"], plan["rows"][i]["caption"]) for i in chosen]
        try:
            with st.spinner(f"Adding {len(pairs)} pairs…"):
                outcome = state.add_pairs(ws, model, pairs, note="suggested additions", where="suggest")
            st.session_state.pop(PLAN_KEY, None)
            st.success(outcome.message())
        except ValueError as error:
            st.error(plain(error))

"""Session glue between Streamlit and ``core.workspace`` (no computation here).

* the current workspace id lives in ``st.session_state["ws_id"]``;
* the live model of each workspace (vectors + the incremental edit engine) lives in a server-wide
  registry (``st.cache_resource``), built in a background thread so the app stays usable while a
  cold cache is filled; pages call :func:`require_model`, which draws a progress bar meanwhile;
* every edit goes through :func:`commit_edit` etc.: the edit is applied to the live model (new
  accuracy in ms), then committed to the workspace's SQLite log in one transaction.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

import streamlit as st

from core import workspace as W


# ------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """A background build of one workspace's live model."""

    ws_id: str
    key: str
    fraction: float = 0.0
    message: str = "Starting"
    model: object | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), message


@st.cache_resource(show_spinner=False)
def _registry() -> dict:
    """Server-wide: ``{workspace path: Job}`` (one live model per workspace, shared by sessions)."""
    return {"jobs": {}, "lock": threading.Lock()}


def _build(job: Job, ws: W.Workspace) -> None:
    try:
        bank = W.Bank(ws, progress=lambda f, m: job.progress(0.9 * f, m))
        job.progress(0.9, "Finding each evaluation image's nearest anchors")
        job.model = W.LiveModel(bank, ws.active_pair_ids(),
                                progress=lambda f, m: job.progress(0.9 + 0.1 * f, m))
        if ws.baseline_accuracy() is None and not ws.edits():
            ws.set_baseline_accuracy(job.model.accuracy, job.model.per_class)
        job.model.start_influence()  # the Curate page's table, computed ahead in the background
        job.progress(1.0, "Ready")
    except ValueError as error:
        job.error = str(error)
    except Exception as error:  # noqa: BLE001 - shown to the user, details in the log
        traceback.print_exc()
        job.error = f"{type(error).__name__}: {error}"
    finally:
        job.finished = time.time()


def model_job(ws: W.Workspace, restart: bool = False) -> Job:
    """The (possibly running) build job of ``ws``'s live model under its current settings."""
    reg = _registry()
    key = W.settings_key(ws.settings())
    with reg["lock"]:
        job = reg["jobs"].get(str(ws.path))
        stale = job is None or job.key != key or restart or (job.done and job.error is not None and restart)
        if job is not None and job.done and job.model is not None and not stale:
            # another process (or a lost session) may have edited the log: rebuild if out of sync
            if not W.sync_live_model(ws, job.model):
                stale = True
        if stale:
            job = Job(ws_id=ws.id, key=key)
            reg["jobs"][str(ws.path)] = job
            job.thread = W.start_thread(_build, f"rosetta-build-{ws.id}", job, ws)
    return job


def forget(ws_path) -> None:
    reg = _registry()
    with reg["lock"]:
        reg["jobs"].pop(str(ws_path), None)


# ------------------------------------------------------------------------------------ workspace
def ensure_demo() -> None:
    """First start: no workspace yet and the demo data is there -> create the demo workspace."""
    if W.list_workspaces():
        return
    try:
        W.demo_root()
        W.create_demo_workspace("demo")
    except ValueError:
        pass  # no demo data: the Workspaces page explains what to do


def current_workspace() -> W.Workspace | None:
    ensure_demo()
    spaces = W.list_workspaces()
    if not spaces:
        return None
    wid = st.session_state.get("ws_id")
    for ws in spaces:
        if ws.id == wid:
            return ws
    demo = [w for w in spaces if w.id == "demo"]
    ws = demo[0] if demo else spaces[0]
    st.session_state["ws_id"] = ws.id
    return ws


def set_workspace(ws_id: str) -> None:
    st.session_state["ws_id"] = ws_id
    for key in ("query", "last_edit", "explain_cache"):
        st.session_state.pop(key, None)


def require_workspace() -> W.Workspace:
    ws = current_workspace()
    if ws is None:
        st.info("No workspace yet. Create one on the **Workspaces** page (the demo needs the data "
                "folder described there).")
        st.page_link("pages/workspaces.py", label="Go to Workspaces", icon=":material/folder_open:")
        st.stop()
    return ws


def require_model(ws: W.Workspace, wait_s: float = 1.5):
    """The live model of ``ws``; while it is being built, draw progress and stop the page."""
    job = model_job(ws)
    if not job.done and job.thread is not None:
        job.thread.join(timeout=wait_s)
    if job.done and job.model is not None:
        return job.model
    if job.done and job.error:
        st.error(f"This workspace's model could not be built: {job.error}")
        if st.button("Try again", key="retry_build"):
            model_job(ws, restart=True)
            st.rerun()
        st.stop()
    _progress_panel(ws)
    st.stop()


def progress_if_building(ws: W.Workspace) -> None:
    """A live progress bar while ``ws``'s model is being built (nothing once it is ready)."""
    job = model_job(ws)
    if not job.done:
        _progress_panel(ws)
    elif job.error:
        st.error(f"The model of this workspace could not be built: {job.error}")


@st.fragment(run_every=1.0)
def _progress_panel(ws: W.Workspace) -> None:
    job = model_job(ws)
    if job.done:
        st.rerun()
    elapsed = time.time() - job.started
    st.progress(min(max(job.fraction, 0.0), 1.0),
                text=f"Preparing **{ws.name}**: {job.message} ({elapsed:.0f} s). The first start "
                     "embeds every picture once; later starts read them from the cache.")
    st.caption("You can keep using the Data, Workspaces and Settings pages meanwhile.")


# ----------------------------------------------------------------------------------------- edits
def _record(kind: str, result) -> None:
    st.session_state["last_edit"] = {
        "kind": kind, "accuracy": result.accuracy, "before": result.accuracy_before,
        "ms": result.elapsed_ms, "pairs": [int(i) for i in result.pair_ids],
        "changed": result.n_changed}


def remove_pairs(ws: W.Workspace, model, pair_ids, note: str = ""):
    """Remove pairs: live model first (ms), then one SQLite transaction."""
    with model.lock:
        result = model.remove(pair_ids)
        try:
            ws.remove_pairs(pair_ids, accuracy=result.accuracy, per_class=model.per_class, note=note)
        except Exception:
            model.undo()  # keep the model equal to what is on disk
            raise
    _record("remove", result)
    return result


def _step_history(ws: W.Workspace, model, direction: str):
    """Undo or redo the latest edit: re-score in place when the live model holds it, otherwise
    commit the step and rebuild the model from the log in the background."""
    with model.lock:
        peek = ws.peek_undo if direction == "undo" else ws.peek_redo
        if peek() is None:
            raise ValueError(f"Nothing to {direction}.")
        can = model.session.can_undo if direction == "undo" else model.session.can_redo
        result = getattr(model, direction)() if can else None
        getattr(ws, direction)(accuracy=None if result is None else result.accuracy,
                               per_class=None if result is None else model.per_class)
    if result is None:
        model_job(ws, restart=True)
        return None
    _record(direction, result)
    return result


def undo(ws: W.Workspace, model):
    return _step_history(ws, model, "undo")


def redo(ws: W.Workspace, model):
    return _step_history(ws, model, "redo")


def add_pairs(ws: W.Workspace, model, pairs, note: str = ""):
    """Add ``(image_ref, caption)`` pairs: commit them, embed only the new ones, re-score."""
    with model.lock:
        seq, new_ids = ws.add_pairs(pairs, note=note)
        try:
            bank = model.bank.extended(ws)
            result = model.add(bank, new_ids)
        except Exception:
            ws.undo()  # the pairs could not be embedded: take the addition back
            raise
        ws.set_edit_accuracy(seq, result.accuracy, model.per_class)
    _record("add", result)
    return result

"""Session glue between Streamlit and the core (no computation here).

* Server-wide resources live in ``st.cache_resource``: the embedding cache, one
  :class:`core.store.Workspace` object per workspace folder (each owns one SQLite connection), and one
  live model per workspace, built in a background thread so the app stays usable meanwhile.
* The current workspace id lives in ``st.session_state["ws_id"]``.
* Every edit goes through :func:`remove_pairs`, :func:`add_pairs`, :func:`undo`, :func:`redo`, which
  call the live model's one edit path (one SQLite transaction each) and record the outcome for the
  page; the current selection is dropped after every edit (``selection_key``).
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass, field

import streamlit as st

from core import demo, store
from core.cache import EmbeddingCache
from core.live import EditOutcome, LiveModel, WorkspaceVectors
from ui.safe import plain

# ------------------------------------------------------------------------------------- resources
@st.cache_resource(show_spinner=False)
def embedding_cache() -> EmbeddingCache:
    """The server's embedding cache (``$ROSETTA_CACHE_DIR`` or the user cache folder)."""
    return EmbeddingCache()


@st.cache_resource(show_spinner=False)
def _registry() -> dict:
    """Server-wide: ``{"workspaces": {path: Workspace}, "jobs": {path: Job}, "influence": {...},
    "threads": [...]}``; the background workers are joined before the interpreter tears down."""
    reg = {"workspaces": {}, "jobs": {}, "influence": {}, "threads": [], "lock": threading.RLock()}

    def join() -> None:
        deadline = time.time() + 30
        for t in list(reg["threads"]):
            t.join(timeout=max(0.0, deadline - time.time()))

    try:  # threading's own exit hook runs before atexit's, while modules are still importable
        threading._register_atexit(join)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons
        import atexit

        atexit.register(join)
    return reg


def start_thread(target, name: str, *args) -> threading.Thread:
    """A daemon worker the interpreter waits for at exit (a worker killed inside numpy/torch at
    shutdown can abort the process)."""
    reg = _registry()
    t = threading.Thread(target=target, args=args, daemon=True, name=name)
    with reg["lock"]:
        reg["threads"][:] = [x for x in reg["threads"] if x.is_alive()] + [t]
    t.start()
    return t


def workspace(path) -> store.Workspace:
    """The shared :class:`core.store.Workspace` of a folder (one connection for the whole server)."""
    reg = _registry()
    key = str(path)
    with reg["lock"]:
        ws = reg["workspaces"].get(key)
        if ws is None or not ws.db_path.is_file():
            ws = reg["workspaces"][key] = store.Workspace(path)
        return ws


def all_workspaces() -> list[store.Workspace]:
    return [workspace(p) for p in store.list_workspaces()]


# ------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """A background build of one workspace's live model."""

    key: str
    fraction: float = 0.0
    message: str = "Starting"
    model: LiveModel | None = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None
    #: after a quick first start: (fraction, message) of embedding the remaining pairs
    growing: tuple[float, str] | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    def progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), message


#: A first start on an empty cache embeds this many anchor pictures (with their captions) before the
#: app is usable, and the rest in the background (``ROSETTA_FIRST_IMAGES``; 0 = all at once).
FIRST_IMAGES = int(os.environ.get("ROSETTA_FIRST_IMAGES", "400"))


def _build(job: Job, ws: store.Workspace) -> None:
    try:
        vectors = WorkspaceVectors(ws, embedding_cache(), progress=lambda f, m: job.progress(0.9 * f, m),
                                   first_images=FIRST_IMAGES or None)
        job.progress(0.9, "Finding each labeled picture's nearest anchors")
        job.model = LiveModel(ws, vectors, progress=lambda f, m: job.progress(0.9 + 0.1 * f, m))
        job.progress(1.0, "Ready")
    except ValueError as error:
        job.error = str(error)
    except Exception as error:  # noqa: BLE001 - shown to the user as a sentence, details in the log
        traceback.print_exc()
        job.error = f"an unexpected {type(error).__name__} (details in the server log)."
    finally:
        job.finished = time.time()
    if job.model is None:
        return
    start_influence(job.model)
    if job.model.vectors.pending:
        _grow(job, ws)


def _grow(job: Job, ws: store.Workspace) -> None:
    """Embed the pairs a quick first start left pending, then swap in the model of all of them
    (edits made meanwhile are in the log; the new model syncs to it)."""
    job.growing = (0.0, "Embedding the remaining anchor pairs")
    try:
        vectors = WorkspaceVectors(ws, embedding_cache(), progress=lambda f, m: setattr(job, "growing", (f, m)))
        model = LiveModel(ws, vectors)
        model.sync()
        job.model = model
        start_influence(model)
    except Exception:  # noqa: BLE001 - the quick model stays in service; details in the log
        traceback.print_exc()
    finally:
        job.growing = None


@st.fragment(run_every=3.0)
def growth_panel(ws: store.Workspace, shown) -> None:
    """The growth note, refreshed every 3 s; the page reruns once the model of all pairs replaces
    the ``shown`` one."""
    job = _registry()["jobs"].get(str(ws.path))
    if job is not None and job.model is not shown and job.growing is None:
        st.rerun()
    note = growth_note(ws)
    if note:
        st.info(note, icon=":material/hourglass_top:")


def growth_note(ws: store.Workspace) -> str | None:
    """A sentence while a quick first start's model grows to all pairs (``None`` otherwise)."""
    job = _registry()["jobs"].get(str(ws.path))
    if job is None or job.growing is None or job.model is None:
        return None
    v, (fraction, message) = job.model.vectors, job.growing
    return (f"These numbers are for the {int(v.ok.sum()):,} anchor pairs embedded so far; the other "
            f"{v.pending:,} are being embedded in the background ({100 * fraction:.0f} %: {message}). "
            "The page switches to all of them when they are ready.")


def model_job(ws: store.Workspace, restart: bool = False) -> Job:
    """The (possibly running) build job of ``ws``'s live model under its current settings."""
    reg = _registry()
    key = store.settings_key(ws.settings())
    with reg["lock"]:
        job = reg["jobs"].get(str(ws.path))
        stale = job is None or job.key != key or restart
        if job is not None and job.done and job.model is not None and job.model.needs_rebuild:
            stale = True
        if stale:
            job = Job(key=key)
            reg["jobs"][str(ws.path)] = job
            job.thread = start_thread(_build, f"rosetta-build-{ws.id}", job, ws)
    return job


def forget(ws_path) -> None:
    """Drop a deleted workspace's resources."""
    reg = _registry()
    with reg["lock"]:
        reg["jobs"].pop(str(ws_path), None)
        reg["influence"].pop(str(ws_path), None)
        ws = reg["workspaces"].pop(str(ws_path), None)
    if ws is not None:
        ws.close()


# ------------------------------------------------------------------------------------ influence
#: the longest a background influence computation waits for the script run that started it
RUN_WAIT_S = 60.0


def _script_run_thread() -> threading.Thread | None:
    """The thread of the script run calling this (None outside a script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    here = threading.current_thread()
    if get_script_run_ctx(suppress_warning=True) is None or here is threading.main_thread():
        return None
    return here


def start_influence(model: LiveModel) -> None:
    """Compute the influence table of ``model``'s current version in a background thread (edits
    stay instant meanwhile); :func:`influence_snapshot` reads it. Started from a page, the work
    waits until that script run is over: its seconds of pure Python hold the GIL, and the rest of
    the run (and the sending of the page) would wait 0.5-1 s for it."""
    run = _script_run_thread()
    reg = _registry()
    with reg["lock"]:
        slot = reg["influence"].setdefault(str(model.ws.path), {"rows": None, "version": None,
                                                                 "target": None, "model": None})
        if slot["model"] is not model:
            slot.update(rows=None, version=None, target=None, model=model)
        if slot["version"] == model.version or slot["target"] == model.version:
            return
        slot["target"] = model.version

    def work() -> None:
        if run is not None:
            run.join(timeout=RUN_WAIT_S)
        try:
            inf, version = model.influence()
            rows = model.influence_rows(inf)
        except Exception:  # noqa: BLE001 - the table stays as it was; details in the log
            traceback.print_exc()
            with reg["lock"]:
                slot["target"] = None
            return
        with reg["lock"]:
            if slot["model"] is model and (slot["version"] is None or version >= slot["version"]):
                slot["rows"], slot["version"] = rows, version
            if slot["target"] == version:
                slot["target"] = None

    start_thread(work, "rosetta-influence")


def influence_snapshot(model: LiveModel):
    """``(rows or None, version they describe, computing?)`` without waiting; the rows may describe
    an earlier version while the table is refreshed after an edit."""
    slot = _registry()["influence"].get(str(model.ws.path)) or {}
    if slot.get("model") is not model:
        return None, None, True
    return slot["rows"], slot["version"], slot["target"] is not None


# ------------------------------------------------------------------------------------ workspace
def ensure_demo() -> None:
    """First start: no workspace yet and the demo data is there -> create the demo workspace."""
    if store.list_workspaces():
        return
    try:
        demo.create_demo_workspace("demo")
    except ValueError:
        pass  # no demo data: the Workspaces page explains what to do


def current_workspace() -> store.Workspace | None:
    ensure_demo()
    paths = store.list_workspaces()
    if not paths:
        return None
    wid = st.session_state.get("ws_id")
    chosen = next((p for p in paths if p.name == wid), None)
    if chosen is None:
        chosen = next((p for p in paths if p.name == "demo"), paths[0])
        st.session_state["ws_id"] = chosen.name
    return workspace(chosen)


def set_workspace(ws_id: str, message: str | None = None) -> None:
    """Switch this session to workspace ``ws_id`` (``message``: a confirmation shown once)."""
    st.session_state["ws_id"] = ws_id
    for key in ("query", "last_edit", "explain_cache", "sidebar_ws"):
        st.session_state.pop(key, None)
    clear_selection()
    if message:
        st.session_state["flash"] = message


def flash() -> None:
    """Show (once) the confirmation a previous run left, e.g. after creating a workspace."""
    message = st.session_state.pop("flash", None)
    if message:
        st.toast(message, icon=":material/check_circle:")


def require_workspace() -> store.Workspace:
    ws = current_workspace()
    if ws is None:
        st.info("No workspace yet. Create one on the Workspaces page (the demo needs the data folder "
                "described there).")
        st.page_link("pages/workspaces.py", label="Go to Workspaces", icon=":material/folder_open:")
        st.stop()
    return ws


def require_model(ws: store.Workspace, wait_s: float = 1.5) -> LiveModel:
    """The live model of ``ws``, in step with the log; while it is being built, draw progress and
    stop the page."""
    job = model_job(ws)
    if not job.done and job.thread is not None:
        job.thread.join(timeout=wait_s)
    if job.done and job.model is not None:
        try:
            if job.model.sync():  # another process or session edited: catch up (one query if not)
                clear_selection()
        except ValueError as error:
            st.warning(plain(str(error)))
        return job.model
    if job.done and job.error:
        st.error(f"This workspace's model could not be built: {plain(job.error)}")
        if st.button("Try again", key="retry_build"):
            model_job(ws, restart=True)
            st.rerun()
        st.stop()
    _progress_panel(ws)
    st.stop()


def progress_if_building(ws: store.Workspace) -> None:
    """A live progress bar while ``ws``'s model is being built (nothing once it is ready)."""
    job = model_job(ws)
    if not job.done:
        _progress_panel(ws)
    elif job.error:
        st.error(f"The model of this workspace could not be built: {plain(job.error)}")


@st.fragment(run_every=1.0)
def _progress_panel(ws: store.Workspace) -> None:
    job = model_job(ws)
    if job.done:
        st.rerun()
    elapsed = time.time() - job.started
    st.progress(min(max(job.fraction, 0.0), 1.0),
                text=f"Preparing {plain(ws.name)}: {plain(job.message)} ({elapsed:.0f} s). The first start embeds "
                     "every picture once; later starts read them from the cache.")
    st.caption("You can keep using the Data, Workspaces and Settings pages meanwhile.")


# ----------------------------------------------------------------------------------------- edits
def selection_key(name: str) -> str:
    """A widget key that changes after every edit, so no selection survives an edit."""
    return f"{name}-{st.session_state.get('selection_epoch', 0)}"


def clear_selection() -> None:
    st.session_state["selection_epoch"] = st.session_state.get("selection_epoch", 0) + 1


def _record(outcome: EditOutcome, where: str) -> EditOutcome:
    st.session_state["last_edit"] = {"message": outcome.message(), "seq": outcome.seq, "where": where,
                                     "before": outcome.before, "after": outcome.after}
    clear_selection()
    return outcome


def remove_pairs(ws: store.Workspace, model: LiveModel, pair_ids, note: str = "",
                 where: str = "") -> EditOutcome:
    """Remove pairs (one transaction: the log and the live model change together or not at all)."""
    return _record(model.remove(pair_ids, note=note), where)


def add_pairs(ws: store.Workspace, model: LiveModel, pairs, note: str = "", where: str = "") -> EditOutcome:
    """Add ``(image_ref, caption)`` pairs; stored uploads of a refused addition are deleted."""
    try:
        return _record(model.add(pairs, note=note), where)
    except BaseException:
        ws.remove_unreferenced_files(ref for ref, _ in pairs)
        raise


def undo(ws: store.Workspace, model: LiveModel, expected_seq: int | None = None, where: str = "") -> EditOutcome:
    """Undo the edit the page offered (``expected_seq``; another one on top raises StaleView)."""
    return _record(model.undo(expected_seq=expected_seq), where)


def redo(ws: store.Workspace, model: LiveModel, expected_seq: int | None = None, where: str = "") -> EditOutcome:
    return _record(model.redo(expected_seq=expected_seq), where)


def sidebar_summary(ws: store.Workspace) -> None:
    """Pairs, labeled pictures, encoders, k and p — from the live model once it is built, so the
    sidebar agrees with the page after every edit."""
    s = ws.settings()
    job = _registry()["jobs"].get(str(ws.path))
    model = job.model if job is not None and job.done else None
    if model is not None and job.key == store.settings_key(s):
        n_pairs, k = model.n_anchors, model.k
    else:
        n_pairs, k = len(ws.active_pair_ids()), s["k"]
    n_items = ws.counts()["eval"]
    st.caption(f"{n_pairs:,} anchor pair{'s' if n_pairs != 1 else ''} · {n_items:,} labeled picture"
               f"{'s' if n_items != 1 else ''} · {plain(s['image_encoder'])} + {plain(s['text_encoder'])} · "
               f"k = {k:,}, p = {float(s['p']):g}")

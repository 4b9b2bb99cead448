"""The workspace store: anchor pairs, a labeled set, settings and the edit log, in one SQLite file.

A workspace is a folder under :func:`workspaces_root` holding ``workspace.sqlite`` and ``files/``
(uploaded images, stored under their content hash). Vectors are never stored here: they live in the
embedding cache (``core.cache``), keyed by file content, so a workspace costs kilobytes.

**The log is the only history.** The active anchor set, the undo stack and the redo stack are all
*derived* by replaying the append-only ``edits`` table (:func:`replay`); nothing else keeps a second
copy that could disagree with it. Each row is ``remove`` / ``add`` (a user edit, which clears the redo
stack) or ``undo`` / ``redo`` naming the row it inverts / re-applies.

**One edit = one transaction.** :meth:`Workspace.transaction` opens ``BEGIN IMMEDIATE`` (WAL,
``synchronous=FULL``); inside it :meth:`Transaction.state` reads the log, :func:`plan_remove`,
:func:`plan_add`, :func:`plan_undo` and :func:`plan_redo` validate an edit against *that* state (the
one set of rules), and :meth:`Transaction.append` writes the edit together with the metrics measured
after it. The caller (``core.live.LiveModel``) applies the edit to its in-memory model between the
plan and the append, and reverts it when anything fails, so memory and disk never diverge. A process
killed mid-edit leaves the whole edit or none of it.

Image references are stored portably: ``demo:<relative path>`` resolves against the demo data folder,
``ws:<name>`` against the workspace's ``files/`` folder, anything else is an absolute path.

Example::

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> ws = create_workspace("Tiny", [("a.jpg", "a dog"), ("b.jpg", "a cat")], [("c.jpg", "dog")],
    ...                       root=root)
    >>> with ws.transaction() as tx:
    ...     op = plan_remove(tx.state(), [0], min_active=1)
    ...     seq = tx.append(op)
    >>> sorted(ws.active_pair_ids()), ws.peek_undo().describe()
    ([1], 'remove of 1 pair (#1)')
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from core import asif

SCHEMA_VERSION = 2
WORKSPACES_ENV = "ROSETTA_WORKSPACES"
DB_NAME = "workspace.sqlite"
#: Folder of a workspace made from imported vectors: its anchors as `core.asif.save_mapped_pairs` writes them.
VECTORS_DIR = "vectors"
#: The key those vectors are saved under (:meth:`core.asif.AsifModel.open_mapped` checks it).
VECTORS_KEY = "workspace-vectors"
#: Prefix of a picture reference that imported vectors name but the app does not read (not a file
#: inside the allowed folders, or a URL): the caption is shown alone.
EXTERNAL_REF = "external:"
#: Seconds an edit waits for another process's write lock before it gives up with a message.
LOCK_WAIT_S = float(os.environ.get("ROSETTA_LOCK_WAIT_S", 5.0))
#: The stated range of p (the power of the relative representation); larger values overflow.
P_RANGE = (1.0, 64.0)
#: Default tuning fraction and seed of the labeled set's tuning / test split.
DEFAULT_TUNE_FRACTION = 0.5
DEFAULT_SPLIT_SEED = 0

#: A new workspace starts from the engine's measured defaults (docs/RESULTS.md, "## ASIF engine");
#: ``k`` is lowered to half the pairs for a small workspace (:func:`default_k`).
DEFAULT_SETTINGS = {
    "image_encoder": "efficientnet-lite0",
    "text_encoder": "minilm",
    "k": asif.DEFAULT_K,
    "p": asif.DEFAULT_P,
    "templates": list(asif.DEFAULT_TEMPLATES),
    "tune_fraction": DEFAULT_TUNE_FRACTION,
    "split_seed": DEFAULT_SPLIT_SEED,
}


class WorkspaceBusy(ValueError):
    """Another process holds the workspace's write lock for longer than :data:`LOCK_WAIT_S`."""


class StaleView(ValueError):
    """The edit a page offered to undo or redo is no longer the one on top of the log."""


def workspaces_root() -> Path:
    """Folder holding all workspaces: ``$ROSETTA_WORKSPACES`` or the user data dir."""
    env = os.environ.get(WORKSPACES_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("rosetta")) / "workspaces"


def slugify(name: str) -> str:
    """Folder-safe id for a workspace name.

    >>> slugify("My demo!")
    'my-demo'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).strip().lower()).strip("-")
    if not slug:
        raise ValueError("A workspace needs a name with at least one letter or digit.")
    return slug[:60]


def default_k(n_pairs: int) -> int:
    """The k a new workspace of ``n_pairs`` anchor pairs starts with: the engine default, at most
    half the pairs (so that pairs can still be removed).

    >>> default_k(35000), default_k(25), default_k(1)
    (800, 12, 1)
    """
    return int(min(asif.DEFAULT_K, max(1, n_pairs // 2)))


def effective_k(k: int, n_active: int) -> int:
    """The k the model runs with: the user's, unless fewer pairs are active (then all of them).

    >>> effective_k(800, 35000), effective_k(800, 25)
    (800, 25)
    """
    return int(max(1, min(int(k), int(n_active))))


# ---------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Pair:
    pair_id: int
    image: str  # stored reference (demo:/ws:/absolute)
    caption: str
    base: bool  # part of the initial anchor set (False: added by an edit)


@dataclass(frozen=True)
class LabeledItem:
    """One labeled picture. ``part`` is ``"test"`` for a separately given test set, else ``None``
    (the seeded tuning / test split decides)."""

    item_id: int
    image: str
    label: str
    part: str | None = None


@dataclass(frozen=True)
class Edit:
    """One row of the log. ``metrics`` are the numbers measured right after it (see
    ``core.live.Metrics.to_dict``), under the settings ``settings_key`` names."""

    seq: int
    kind: str  # remove | add | undo | redo
    pair_ids: tuple[int, ...]
    ref_seq: int | None
    metrics: dict | None
    settings_key: str | None
    note: str
    created_at: float

    def describe(self) -> str:
        if self.ref_seq is not None:
            return f"{self.kind} of #{self.ref_seq}"
        return f"{self.kind} of {_pairs(len(self.pair_ids))} (#{self.seq})"


@dataclass(frozen=True)
class Operation:
    """A planned edit: what to do to the active set and how to log it.

    ``effect`` is ``"remove"`` or ``"add"`` (what happens to ``pair_ids``); ``kind`` and ``ref_seq``
    are the log row; ``target`` is the user edit an undo / redo acts on; ``new_pairs`` are the
    ``(image_ref, caption)`` rows an addition inserts (their ids are ``pair_ids``)."""

    kind: str
    effect: str
    pair_ids: tuple[int, ...]
    ref_seq: int | None = None
    target: Edit | None = None
    new_pairs: tuple[tuple[str, str], ...] = ()
    note: str = ""

    def describe(self) -> str:
        if self.target is not None:
            return f"{self.kind} of {self.target.describe()}"
        return f"{self.kind} of {_pairs(len(self.pair_ids))}"


@dataclass(frozen=True)
class LogState:
    """The log replayed: the active ids, the undo / redo stacks (user edits, top last) and the last
    sequence number (0 for an empty log)."""

    active: frozenset
    undo_stack: tuple[Edit, ...]
    redo_stack: tuple[Edit, ...]
    seq: int
    next_pair_id: int

    def peek_undo(self) -> Edit | None:
        return self.undo_stack[-1] if self.undo_stack else None

    def peek_redo(self) -> Edit | None:
        return self.redo_stack[-1] if self.redo_stack else None


def replay(base_ids: Iterable[int], edits: Sequence[Edit], next_pair_id: int) -> LogState:
    """Active ids and undo / redo stacks after the log ``edits`` (in sequence order).

    >>> e = lambda seq, kind, ids, ref=None: Edit(seq, kind, ids, ref, None, None, "", 0.0)
    >>> s = replay({0, 1, 2}, [e(1, "remove", (0,)), e(2, "undo", (0,), 1), e(3, "remove", (1,))], 3)
    >>> sorted(s.active), [x.seq for x in s.undo_stack], [x.seq for x in s.redo_stack], s.seq
    ([0, 2], [3], [], 3)
    """
    active = set(base_ids)
    by_seq = {e.seq: e for e in edits}
    undo: list[Edit] = []
    redo: list[Edit] = []

    def apply(edit: Edit, inverse: bool) -> None:
        remove = (edit.kind == "remove") != inverse
        (active.difference_update if remove else active.update)(edit.pair_ids)

    for e in edits:
        if e.kind in ("remove", "add"):
            apply(e, False)
            undo.append(e)
            redo.clear()
        elif e.kind == "undo":
            target = by_seq[e.ref_seq]
            apply(target, True)
            if undo and undo[-1].seq == target.seq:
                undo.pop()
            redo.append(target)
        elif e.kind == "redo":
            target = by_seq[e.ref_seq]
            apply(target, False)
            if redo and redo[-1].seq == target.seq:
                redo.pop()
            undo.append(target)
    last = edits[-1].seq if edits else 0
    return LogState(frozenset(active), tuple(undo), tuple(redo), last, next_pair_id)


# ---------------------------------------------------------------------------------- the rules
def plan_remove(state: LogState, pair_ids: Iterable[int], *, min_active: int = 1,
                note: str = "") -> Operation:
    """Validate removing ``pair_ids`` against ``state``: every id active, at least ``min_active``
    (the model's k) left."""
    ids = sorted({int(i) for i in pair_ids})
    if not ids:
        raise ValueError("Select at least one pair to remove.")
    missing = [i for i in ids if i not in state.active]
    if missing:
        raise ValueError(f"{_pairs(len(missing))} (e.g. #{missing[0]}) {'is' if len(missing) == 1 else 'are'} "
                         "not in the current anchor set; another session may have removed "
                         f"{'it' if len(missing) == 1 else 'them'}.")
    left = len(state.active) - len(ids)
    if left < max(1, min_active):
        raise ValueError(f"Removing {_pairs(len(ids))} would leave {left:,}, fewer than k = "
                         f"{min_active:,}; lower k in Settings first.")
    return Operation("remove", "remove", tuple(ids), note=note)


def check_new_pairs(pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The ``(image_ref, caption)`` rows of an addition, checked (captions stripped, non-empty)."""
    rows = tuple((str(img), str(cap).strip()) for img, cap in pairs)
    if not rows:
        raise ValueError("No pairs to add.")
    if any(not cap for _, cap in rows):
        raise ValueError("Every added pair needs a non-empty caption.")
    return rows


def plan_add(state: LogState, pairs: Sequence[tuple[str, str]], *, note: str = "") -> Operation:
    """Validate adding ``(image_ref, caption)`` rows; their ids are the next free ones."""
    rows = check_new_pairs(pairs)
    ids = tuple(range(state.next_pair_id, state.next_pair_id + len(rows)))
    return Operation("add", "add", ids, new_pairs=rows, note=note)


def plan_undo(state: LogState, *, expected_seq: int | None = None, min_active: int = 1) -> Operation:
    """Validate undoing the latest user edit (``expected_seq``: the edit the caller showed)."""
    return _plan_step(state, "undo", expected_seq, min_active)


def plan_redo(state: LogState, *, expected_seq: int | None = None, min_active: int = 1) -> Operation:
    """Validate redoing the latest undone edit (``expected_seq``: the edit the caller showed)."""
    return _plan_step(state, "redo", expected_seq, min_active)


def _plan_step(state: LogState, direction: str, expected_seq: int | None, min_active: int) -> Operation:
    target = state.peek_undo() if direction == "undo" else state.peek_redo()
    if target is None:
        raise ValueError(f"Nothing to {direction}.")
    if expected_seq is not None and int(expected_seq) != target.seq:
        raise StaleView(f"This workspace changed in another session: the edit to {direction} is now "
                        f"{target.describe()}. The page shows the current state; try again.")
    remove = (target.kind == "remove") != (direction == "undo")
    effect = "remove" if remove else "add"
    if remove:
        left = len(state.active) - len(target.pair_ids)
        if left < max(1, min_active):
            raise ValueError(f"{direction.capitalize()} of {target.describe()} would leave {left:,} pairs, "
                             f"fewer than k = {min_active:,}; lower k in Settings first.")
    return Operation(direction, effect, target.pair_ids, ref_seq=target.seq, target=target)


def _quote(text: str, limit: int = 60) -> str:
    """A user string shortened for a message (the page renders messages as text)."""
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _pairs(n: int) -> str:
    return f"{n:,} pair{'s' if n != 1 else ''}"


# ---------------------------------------------------------------------------------- settings
def validate_settings(changes: dict, n_active: int | None = None) -> dict:
    """Check and normalise settings changes (one sentence per problem); returns the clean dict.

    >>> validate_settings({"p": "8", "k": 5.0, "templates": ["a photo of a {}.", " "]})
    {'p': 8, 'k': 5, 'templates': ['a photo of a {}.']}
    >>> validate_settings({"p": float("inf")})
    Traceback (most recent call last):
    ...
    ValueError: p must be a number from 1 to 64.
    """
    out = dict(changes)
    if "k" in out:
        try:
            k = int(out["k"])
        except (TypeError, ValueError, OverflowError):
            raise ValueError("k must be a whole number.") from None
        if k < 1:
            raise ValueError("k must be at least 1.")
        if n_active is not None and k > n_active:
            raise ValueError(f"k = {k:,} is more than the {n_active:,} active anchor pairs; pick at most "
                             f"{n_active:,}.")
        out["k"] = k
    if "p" in out:
        try:
            p = float(out["p"])
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"p must be a number from {P_RANGE[0]:g} to {P_RANGE[1]:g}.") from None
        if not math.isfinite(p) or not P_RANGE[0] <= p <= P_RANGE[1]:
            raise ValueError(f"p must be a number from {P_RANGE[0]:g} to {P_RANGE[1]:g}.")
        out["p"] = int(p) if p == int(p) else p
    if "templates" in out:
        templates = [str(t).strip() for t in out["templates"] if t is not None and str(t).strip()]
        if not templates:
            raise ValueError("Give at least one prompt template, e.g. 'a photo of a {}.'")
        for t in templates:
            if t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
                raise ValueError(f"Each template needs exactly one {{}} where the class name goes "
                                 f"(and no other braces); {_quote(t)} does not.")
        out["templates"] = templates
    if "classes" in out:
        classes: list[str] = []
        for c in out["classes"]:
            c = str(c).strip()
            if c and c not in classes:
                classes.append(c)
        if len(classes) < 2:
            raise ValueError("Give at least two class names.")
        out["classes"] = classes
    if "tune_fraction" in out:
        try:
            f = float(out["tune_fraction"])
        except (TypeError, ValueError):
            raise ValueError("The tuning fraction must be a number between 0 and 1.") from None
        if not 0.05 <= f <= 0.95:
            raise ValueError("The tuning fraction must be between 0.05 and 0.95.")
        out["tune_fraction"] = f
    if "split_seed" in out:
        try:
            out["split_seed"] = int(out["split_seed"])
        except (TypeError, ValueError, OverflowError):
            raise ValueError("The split seed must be a whole number.") from None
    if "ann_min_anchors" in out:   # core.ann: distinct anchor pictures from which FAISS searches them
        try:
            out["ann_min_anchors"] = int(out["ann_min_anchors"])
        except (TypeError, ValueError, OverflowError):
            raise ValueError("The approximate-search threshold must be a whole number.") from None
        if out["ann_min_anchors"] < 1:
            raise ValueError("The approximate-search threshold must be at least 1.")
    return out


def settings_key(settings: dict) -> str:
    """What the model's numbers depend on: encoders, k, p, prompts (templates and their wording),
    classes and the split."""
    keys = ("image_encoder", "text_encoder", "k", "p", "templates", "classes", "tune_fraction",
            "split_seed")
    out = {**{k: settings.get(k) for k in keys}, "wording": asif.PROMPT_WORDING}
    if settings.get("ann_min_anchors") is not None:   # only when set (the default is ANN_MIN_ANCHORS)
        out["ann_min_anchors"] = settings["ann_min_anchors"]
    return json.dumps(out, sort_keys=True)


# ---------------------------------------------------------------------------------- database
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id INTEGER PRIMARY KEY, image TEXT NOT NULL, caption TEXT NOT NULL, base INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS eval_items (
    item_id INTEGER PRIMARY KEY, image TEXT NOT NULL, label TEXT NOT NULL, part TEXT);
CREATE TABLE IF NOT EXISTS edits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, pair_ids TEXT NOT NULL,
    ref_seq INTEGER, accuracy REAL, per_class TEXT, note TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, metrics TEXT, settings_key TEXT);
"""


def _connect(db_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(db_path), timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    return con


def _migrate(con: sqlite3.Connection) -> None:
    """Bring a version-1 workspace to this schema (columns added; nothing rewritten)."""
    cols = {r[1] for r in con.execute("PRAGMA table_info(edits)")}
    for name in ("metrics", "settings_key"):
        if name not in cols:
            con.execute(f"ALTER TABLE edits ADD COLUMN {name} TEXT")
    if "part" not in {r[1] for r in con.execute("PRAGMA table_info(eval_items)")}:
        con.execute("ALTER TABLE eval_items ADD COLUMN part TEXT")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (json.dumps(SCHEMA_VERSION),))


def _busy(error: sqlite3.OperationalError) -> bool:
    return "locked" in str(error) or "busy" in str(error)


BUSY_MESSAGE = ("Another session is saving an edit to this workspace; nothing was changed. "
                "Try again in a moment.")


class Transaction:
    """One ``BEGIN IMMEDIATE`` transaction on a workspace (see :meth:`Workspace.transaction`)."""

    def __init__(self, ws: "Workspace", con: sqlite3.Connection):
        self.ws, self.con = ws, con
        self._state: LogState | None = None

    def state(self) -> LogState:
        """The log replayed, read inside this transaction (no other writer can change it now)."""
        if self._state is None:
            self._state = self.ws._state_from(self.con)
        return self._state

    def append(self, op: Operation, metrics: dict | None = None, settings_key: str | None = None) -> int:
        """Write ``op`` (and, for an addition, its new pairs) with the metrics measured after it;
        returns the edit's sequence number."""
        if op.new_pairs:
            self.con.executemany("INSERT INTO pairs VALUES (?, ?, ?, 0)",
                                 [(pid, img, cap) for pid, (img, cap) in zip(op.pair_ids, op.new_pairs)])
        cur = self.con.execute(
            "INSERT INTO edits (kind, pair_ids, ref_seq, accuracy, note, created_at, metrics, settings_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (op.kind, json.dumps([int(i) for i in op.pair_ids]), op.ref_seq,
             None if not metrics else metrics.get("accuracy"), op.note, time.time(),
             None if metrics is None else json.dumps(metrics), settings_key))
        self._state = None
        return int(cur.lastrowid)


class Workspace:
    """One workspace on disk, read through one connection that this object owns.

    Reads are cached by the log's last sequence number: the log is replayed only when it changed
    (``stats`` counts connections opened and replays, for tests and benchmarks). Thread-safe: the
    connection is used under a lock, and writes are serialised by SQLite's own lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db_path = self.path / DB_NAME
        if not self.db_path.is_file():
            raise ValueError(f"No workspace named {self.path.name!r} (its database file is missing).")
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        self._cached: tuple[int, LogState] | None = None
        self._base_ids: frozenset | None = None
        self.stats = {"connections": 0, "replays": 0}

    # ---------------------------------------------------------------- connection
    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = _connect(self.db_path)
            self.stats["connections"] += 1
            if self._read(self._con, "schema", 1) != SCHEMA_VERSION:
                with self._write() as con:
                    _migrate(con)
        return self._con

    @staticmethod
    def _read(con, key: str, default=None):
        row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @contextmanager
    def _write(self):
        """``BEGIN IMMEDIATE`` on this object's connection (under its lock), committed when the block
        ends without an exception and rolled back otherwise; a lock held by another writer for more
        than :data:`LOCK_WAIT_S` becomes :class:`WorkspaceBusy`."""
        with self._lock:
            con = self._connection()
            try:
                con.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                if _busy(error):
                    raise WorkspaceBusy(BUSY_MESSAGE) from None
                raise
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            try:
                con.execute("COMMIT")
            except sqlite3.OperationalError as error:
                con.execute("ROLLBACK")
                if _busy(error):
                    raise WorkspaceBusy(BUSY_MESSAGE) from None
                raise

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """``with ws.transaction() as tx:`` one edit's transaction (see :meth:`_write`)."""
        with self._write() as con:
            yield Transaction(self, con)

    # ---------------------------------------------------------------- metadata
    @property
    def id(self) -> str:
        return self.path.name

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    @property
    def vectors_dir(self) -> Path:
        """The imported vectors of a workspace made from precomputed vectors
        (:func:`core.interchange.create_vector_workspace`): part of its content, not derived."""
        return self.path / VECTORS_DIR

    @property
    def state_dir(self) -> Path:
        """Derived data of this workspace (engine snapshots, map layouts): safe to delete."""
        return self.path / "state"

    def meta(self) -> dict:
        with self._lock:
            return {k: json.loads(v) for k, v in self._connection().execute("SELECT key, value FROM meta")}

    @property
    def name(self) -> str:
        return self.meta().get("name", self.id)

    def settings(self) -> dict:
        """Encoders, k, p, templates, class names and the split (defaults filled in)."""
        out = dict(DEFAULT_SETTINGS)
        out.update(self.meta().get("settings", {}))
        if not out.get("classes"):
            out["classes"] = self.labels()
        return out

    def update_settings(self, **changes) -> dict:
        """Validate (:func:`validate_settings`) and store settings changes; returns the new settings."""
        clean = validate_settings(changes, n_active=len(self.active_pair_ids()) if "k" in changes else None)
        now = self.settings()
        moved = [r for r in ("image_encoder", "text_encoder") if r in clean and clean[r] != now[r]]
        if moved and self.vectors_dir.is_dir():
            raise ValueError(f"This workspace's anchor vectors were imported, made by {now[moved[0]]}; "
                             "they cannot be computed again with another encoder here.")
        with self._write() as con:
            current = self._read(con, "settings", {})
            current.update(clean)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (json.dumps(current),))
        return self.settings()

    # ---------------------------------------------------------------- contents
    def all_pairs(self) -> list[Pair]:
        """Every pair the workspace ever held (active or not), by id."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT pair_id, image, caption, base FROM pairs ORDER BY pair_id").fetchall()
        return [Pair(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def photo_order(self, query: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(photo [n], pair_ids [n])``: the active pairs whose caption contains ``query`` (case
        folded; all when empty), grouped by photo (photos numbered 0, 1, … in the order of their first
        such pair), each photo's pairs by id; a page of photos is a slice (``np.searchsorted`` on
        ``photo``). No :class:`Pair` objects: at 1.6M pairs a list of them took seconds.

        The pairs themselves: :meth:`pairs_by_id`."""
        state = self.state()
        with self._lock:
            cols = "pair_id, image" + (", caption" if query else "")
            rows = self._connection().execute(f"SELECT {cols} FROM pairs ORDER BY pair_id").fetchall()
        folded = query.casefold()
        active = state.active
        photos: dict[str, int] = {}
        photo, ids = [], []
        for r in rows:
            if r[0] in active and (not query or folded in r[2].casefold()):
                photo.append(photos.setdefault(r[1], len(photos)))
                ids.append(r[0])
        photo_a, ids_a = np.asarray(photo, dtype=np.int64), np.asarray(ids, dtype=np.int64)
        order = np.argsort(photo_a, kind="stable")
        return photo_a[order], ids_a[order]

    def pairs_by_id(self, pair_ids: Iterable[int]) -> list[Pair]:
        """The pairs ``pair_ids`` (any state), in that order."""
        wanted = [int(i) for i in pair_ids]
        found: dict[int, Pair] = {}
        with self._lock:
            con = self._connection()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for r in con.execute("SELECT pair_id, image, caption, base FROM pairs WHERE pair_id IN "
                                     f"({','.join('?' * len(chunk))})", chunk):
                    found[r[0]] = Pair(r[0], r[1], r[2], bool(r[3]))
        return [found[i] for i in wanted if i in found]

    def pairs(self) -> list[Pair]:
        """The active anchor pairs (after the log)."""
        active = self.active_pair_ids()
        return [p for p in self.all_pairs() if p.pair_id in active]

    def eval_items(self) -> list[LabeledItem]:
        with self._lock:
            rows = self._connection().execute(
                "SELECT item_id, image, label, part FROM eval_items ORDER BY item_id").fetchall()
        return [LabeledItem(*r) for r in rows]

    def labels(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._connection().execute(
                "SELECT DISTINCT label FROM eval_items ORDER BY label")]

    def counts(self) -> dict:
        state = self.state()
        with self._lock:
            con = self._connection()
            n_all = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            n_eval = con.execute("SELECT COUNT(*) FROM eval_items").fetchone()[0]
        return {"pairs": len(state.active), "pairs_total": n_all, "eval": n_eval, "edits": state.seq}

    def resolve(self, ref: str) -> Path:
        """Turn a stored image reference into a path on this machine (an ``external:`` picture,
        which imported vectors only name, into one that is never a file)."""
        if ref.startswith(EXTERNAL_REF):
            return Path(os.devnull)
        if ref.startswith("demo:"):
            from core.data import demo_data_root

            return demo_data_root() / ref[5:]
        if ref.startswith("ws:"):
            return self.files_dir / ref[3:]
        return Path(ref)

    def store_file(self, data: bytes, suffix: str) -> str:
        """Keep an uploaded file inside the workspace (content-addressed); returns its reference."""
        suffix = suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", suffix or "") else ".bin"
        name = hashlib.sha256(data).hexdigest()[:24] + suffix
        self.files_dir.mkdir(parents=True, exist_ok=True)
        target = self.files_dir / name
        if not target.exists():
            tmp = target.with_suffix(target.suffix + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return "ws:" + name

    def remove_unreferenced_files(self, refs: Iterable[str]) -> None:
        """Delete stored files among ``refs`` that no pair references (a rolled-back addition)."""
        with self._lock:
            used = {r[0] for r in self._connection().execute("SELECT image FROM pairs")}
        for ref in set(refs) - used:
            if ref.startswith("ws:"):
                (self.files_dir / ref[3:]).unlink(missing_ok=True)

    # ---------------------------------------------------------------- edit log
    def _edits(self, con) -> list[Edit]:
        rows = con.execute("SELECT seq, kind, pair_ids, ref_seq, metrics, settings_key, note, created_at, "
                           "accuracy FROM edits ORDER BY seq").fetchall()
        out = []
        for r in rows:
            metrics = json.loads(r[4]) if r[4] else ({"accuracy": r[8]} if r[8] is not None else None)
            out.append(Edit(r[0], r[1], tuple(json.loads(r[2])), r[3], metrics, r[5], r[6], r[7]))
        return out

    def edits(self) -> list[Edit]:
        with self._lock:
            return self._edits(self._connection())

    def _state_from(self, con) -> LogState:
        last = con.execute("SELECT COALESCE(MAX(seq), 0), (SELECT COALESCE(MAX(pair_id), -1) + 1 "
                           "FROM pairs) FROM edits").fetchone()
        cached = self._cached
        if cached is not None and cached[0] == (last[0], last[1]):
            return cached[1]
        state = replay(self.base_pair_ids(), self._edits(con), int(last[1]))
        self.stats["replays"] += 1
        self._cached = ((last[0], last[1]), state)
        return state

    def state(self) -> LogState:
        """The log replayed (cached until its last sequence number changes)."""
        with self._lock:
            return self._state_from(self._connection())

    def active_pair_ids(self) -> frozenset:
        return self.state().active

    def base_pair_ids(self) -> frozenset:
        """The pairs the workspace was created with (the log's starting set)."""
        with self._lock:
            con = self._connection()
            if self._base_ids is None:
                self._base_ids = frozenset(r[0] for r in con.execute("SELECT pair_id FROM pairs WHERE base=1"))
            return self._base_ids

    def peek_undo(self) -> Edit | None:
        """The user edit an undo would invert (``None``: nothing to undo)."""
        return self.state().peek_undo()

    def peek_redo(self) -> Edit | None:
        return self.state().peek_redo()

    def set_baseline(self, metrics: dict, key: str) -> None:
        """Remember the numbers of the unedited anchor set under settings ``key`` (the timeline's
        first point)."""
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('baseline', ?)",
                        (json.dumps({"metrics": metrics, "settings": key}),))

    def baseline(self, key: str) -> dict | None:
        """The baseline metrics measured under settings ``key`` (``None`` when not measured)."""
        b = self.meta().get("baseline")
        if not b or b.get("settings") != key:
            return None
        return b.get("metrics") or {"accuracy": b.get("accuracy")}

    def history(self, key: str) -> list[dict]:
        """Timeline rows: step, what happened, pairs, and the metrics measured after it when they
        were measured under settings ``key`` (else ``None``: another k, p, split … was in force)."""
        base = self.baseline(key) or {}
        out = [{"step": 0, "seq": 0, "edit": "start", "pairs": 0, "note": "", **_metric_cols(base)}]
        for i, e in enumerate(self.edits(), 1):
            same = e.settings_key == key and e.metrics is not None
            out.append({"step": i, "seq": e.seq, "edit": e.describe(), "pairs": len(e.pair_ids),
                        "note": e.note, **_metric_cols(e.metrics if same else {})})
        return out

    # ---------------------------------------------------------------- export
    def export_pairs_csv(self) -> bytes:
        """The curated (active) pair list as CSV bytes: ``pair_id,image,caption``; demo images are
        given relative to the data folder (``demo:`` prefix dropped), uploads by their file name.
        Text that a spreadsheet would run as a formula gets a leading ``'``
        (:func:`core.data.spreadsheet_cell`; reading the file back drops it)."""
        from core.data import spreadsheet_cell

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["pair_id", "image", "caption"])
        for p in self.pairs():
            writer.writerow([p.pair_id, spreadsheet_cell(portable_ref(p.image)), spreadsheet_cell(p.caption)])
        return buf.getvalue().encode("utf-8")


def portable_ref(ref: str) -> str:
    """An image reference as an exported file names it: a demo image relative to the data folder
    (``demo:`` dropped), a workspace's own file relative to the workspace (``files/…``), a picture
    that imported vectors only name as they named it, others as they are."""
    if ref.startswith(EXTERNAL_REF):
        return ref[len(EXTERNAL_REF):]
    if ref.startswith("demo:"):
        return ref[5:]
    if ref.startswith("ws:"):
        return "files/" + ref[3:]
    return ref


def _metric_cols(m: dict) -> dict:
    return {"accuracy": m.get("accuracy"), "tune": m.get("tune"), "test": m.get("test")}


# ---------------------------------------------------------------------------------- create / list
def create_workspace(name: str, pairs: Sequence[tuple[str, str]], eval_items: Sequence[tuple] = (),
                     settings: dict | None = None, root: str | Path | None = None,
                     source: dict | None = None, prepare: Callable[[Path], None] | None = None) -> Workspace:
    """Create a workspace from ``(image_ref, caption)`` pairs (pair ids ``0..P-1`` in this order) and
    ``(image_ref, label)`` (or ``(image_ref, label, "test")`` for a separately given test set) labeled
    items. ``k`` defaults to :func:`default_k` of the number of pairs. ``prepare(folder)`` writes
    more content into the new workspace's folder before it appears. Atomic: a half-created
    workspace is never visible."""
    root = Path(root) if root is not None else workspaces_root()
    wid = slugify(name)
    path = root / wid
    if path.exists():
        raise ValueError(f"A workspace named {name!r} already exists; pick another name.")
    if not pairs:
        raise ValueError("A workspace needs at least one anchor pair (image + caption).")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{wid}.creating-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    merged = dict(DEFAULT_SETTINGS, k=default_k(len(pairs)))
    merged.update(validate_settings(settings or {}))
    con = _connect(tmp / DB_NAME)
    try:
        con.execute("BEGIN")
        for stmt in _SCHEMA.strip().split(";"):
            if stmt.strip():
                con.execute(stmt)
        con.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("schema", json.dumps(SCHEMA_VERSION)), ("name", json.dumps(str(name))),
            ("created_at", json.dumps(time.time())), ("source", json.dumps(source or {"kind": "custom"})),
            ("settings", json.dumps(merged))])
        con.executemany("INSERT INTO pairs VALUES (?, ?, ?, 1)",
                        [(i, str(img), str(cap)) for i, (img, cap) in enumerate(pairs)])
        con.executemany("INSERT INTO eval_items VALUES (?, ?, ?, ?)",
                        [(i, str(item[0]), str(item[1]), item[2] if len(item) > 2 else None)
                         for i, item in enumerate(eval_items)])
        con.execute("COMMIT")
    except BaseException:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    con.close()
    try:
        if prepare is not None:
            prepare(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, path)
    return Workspace(path)


def refs_from_pairset(pairset, ws: Workspace | None = None, copy: bool = False) -> list[tuple[str, str]]:
    """``(image_ref, caption)`` rows of a ``core.data.PairSet``.

    ``copy=True`` stores each image inside ``ws`` (uploads: their staging folder is temporary);
    otherwise the absolute path is kept (a local folder the user owns)."""
    refs = []
    for path in pairset.images:
        if copy:
            if ws is None:
                raise ValueError("copy=True needs the workspace to copy into")
            refs.append(ws.store_file(Path(path).read_bytes(), Path(path).suffix))
        else:
            refs.append(str(Path(path).resolve()))
    return [(refs[i], c) for i, c in zip(pairset.pair_image.tolist(), pairset.captions)]


def create_from_pairset(name: str, pairset, eval_items: Sequence[tuple], copy: bool,
                        root: str | Path | None = None, settings: dict | None = None,
                        source: dict | None = None) -> Workspace:
    """A workspace whose anchors are a loaded ``PairSet`` (uploads: ``copy=True``; a folder: False)."""
    if pairset is None or len(pairset) == 0:
        raise ValueError("No valid image-caption pairs to create a workspace from.")
    labels = sorted({item[1] for item in eval_items})
    s = {"classes": labels} if len(labels) >= 2 else {}
    s.update(settings or {})
    if not copy:
        return create_workspace(name, refs_from_pairset(pairset), eval_items, s, root,
                                source or {"kind": "folder"})
    ws = create_workspace(name, [("pending", c) for c in pairset.captions], eval_items, s, root,
                          source or {"kind": "upload"})
    try:
        rows = refs_from_pairset(pairset, ws, copy=True)
        with ws._write() as con:
            con.executemany("UPDATE pairs SET image=? WHERE pair_id=?",
                            [(ref, i) for i, (ref, _) in enumerate(rows)])
    except BaseException:
        delete_workspace(ws)
        raise
    return ws


def eval_items_from_labeled(labeled, part: str | None = None) -> list[tuple]:
    """``(absolute path, class name[, part])`` rows of a ``core.data.LabeledSet``."""
    rows = [(str(Path(p).resolve()), labeled.class_names[int(y)])
            for p, y in zip(labeled.paths, labeled.labels.tolist())]
    return rows if part is None else [r + (part,) for r in rows]


def list_workspaces(root: str | Path | None = None) -> list[Path]:
    """Folders of the workspaces under ``root`` (open one with :class:`Workspace`)."""
    root = Path(root) if root is not None else workspaces_root()
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".") and (d / DB_NAME).is_file()]


def open_workspace(wid: str, root: str | Path | None = None) -> Workspace:
    root = Path(root) if root is not None else workspaces_root()
    return Workspace(root / slugify(wid))


def duplicate_workspace(ws: Workspace, new_name: str) -> Workspace:
    """Copy a workspace (pairs, labeled set, settings, full edit history, uploaded files)."""
    root = ws.path.parent
    wid = slugify(new_name)
    target = root / wid
    if target.exists():
        raise ValueError(f"A workspace named {new_name!r} already exists; pick another name.")
    tmp = root / f".{wid}.copying-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dst = sqlite3.connect(str(tmp / DB_NAME))
    try:
        with ws._lock:
            ws._connection().backup(dst)  # a consistent snapshot even while another session writes
        dst.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (json.dumps(str(new_name)),))
        dst.commit()
    finally:
        dst.close()
    for folder in ("files", VECTORS_DIR, "state"):
        if (ws.path / folder).is_dir():
            shutil.copytree(ws.path / folder, tmp / folder)
    os.replace(tmp, target)
    return Workspace(target)


def delete_workspace(ws: Workspace) -> None:
    """Delete a workspace folder (vectors it embedded stay in the shared cache; imported ones go with it)."""
    ws.close()
    trash = ws.path.parent / f".{ws.id}.deleting-{os.getpid()}"
    os.replace(ws.path, trash)
    shutil.rmtree(trash, ignore_errors=True)

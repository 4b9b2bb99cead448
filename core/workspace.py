"""Workspaces: anchor pairs + a labeled evaluation set + encoders + k, p + an edit history, on disk.

A workspace is a folder under :func:`workspaces_root` holding ``workspace.sqlite`` (metadata, pairs,
evaluation items and the append-only edit log) and ``files/`` (uploaded images, stored under their
content hash). Vectors are never stored here: they live in the shared embedding cache
(``core.cache``), keyed by file content, so a workspace costs kilobytes and re-opening it is a cache
read.

Durability: every edit is one SQLite transaction in WAL mode with ``synchronous=FULL``; a process
killed mid-edit leaves either the whole edit or none of it. The set of active pairs is *derived* by
replaying the log, so there is no second copy that could disagree with it.

Image references are stored portably: ``demo:<relative path>`` resolves against
``core.data.demo_data_root()`` at run time, ``ws:<name>`` against the workspace's ``files/`` folder,
anything else is an absolute path (a local folder the user pointed at).

Edit log semantics (undo is an edit too): each row is ``remove`` or ``add`` (a user edit, which
clears the redo stack), or ``undo``/``redo`` naming the row they invert/re-apply. :meth:`Workspace.
undo` and :meth:`Workspace.redo` return the effective operation so a live model can mirror it.
"""
from __future__ import annotations

import atexit
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from core import asif

SCHEMA_VERSION = 1
WORKSPACES_ENV = "ROSETTA_WORKSPACES"
DB_NAME = "workspace.sqlite"

#: A new workspace starts from the engine's measured defaults (docs/RESULTS.md, "## ASIF engine").
DEFAULT_SETTINGS = {
    "image_encoder": "efficientnet-lite0",
    "text_encoder": "minilm",
    "k": asif.DEFAULT_K,
    "p": asif.DEFAULT_P,
    "templates": list(asif.DEFAULT_TEMPLATES),
}


def demo_root() -> Path:
    """The demo data folder (:func:`core.data.demo_data_root`; ``ROSETTA_DATA`` overrides)."""
    from core.data import demo_data_root

    return demo_data_root()


def workspaces_root() -> Path:
    """Folder holding all workspaces: ``$ROSETTA_WORKSPACES`` or the user data dir."""
    env = os.environ.get(WORKSPACES_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("rosetta")) / "workspaces"


def slugify(name: str) -> str:
    """Folder-safe id for a workspace name (``"My demo!"`` -> ``"my-demo"``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    if not slug:
        raise ValueError("A workspace needs a name with at least one letter or digit.")
    return slug[:60]


@dataclass(frozen=True)
class Pair:
    pair_id: int
    image: str  # stored reference (demo:/ws:/absolute)
    caption: str
    base: bool  # part of the initial anchor set (False: added by an edit)


@dataclass(frozen=True)
class EvalItem:
    item_id: int
    image: str
    label: str


@dataclass(frozen=True)
class Edit:
    seq: int
    kind: str  # remove | add | undo | redo
    pair_ids: tuple[int, ...]
    ref_seq: int | None
    accuracy: float | None
    per_class: dict | None
    note: str
    created_at: float


@dataclass(frozen=True)
class Operation:
    """What a live model must do to mirror an edit: remove or add these pair ids."""

    kind: str  # "remove" | "add"
    pair_ids: tuple[int, ...]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    pair_id INTEGER PRIMARY KEY, image TEXT NOT NULL, caption TEXT NOT NULL, base INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS eval_items (
    item_id INTEGER PRIMARY KEY, image TEXT NOT NULL, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS edits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, pair_ids TEXT NOT NULL,
    ref_seq INTEGER, accuracy REAL, per_class TEXT, note TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL);
"""


def _connect(db_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(db_path), timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    return con


class _Tx:
    """``with _Tx(path) as con:`` — one IMMEDIATE transaction, committed on success."""

    def __init__(self, db_path: Path):
        self.db_path = db_path

    def __enter__(self) -> sqlite3.Connection:
        self.con = _connect(self.db_path)
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.con.execute("COMMIT")
            else:
                self.con.execute("ROLLBACK")
        finally:
            self.con.close()
        return False


_BASE_IDS: dict[tuple, frozenset] = {}


class Workspace:
    """One workspace on disk. Cheap to construct; every call reads/writes SQLite directly.

    Thread-safe: each call opens its own connection, and writes are serialised by SQLite's lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db_path = self.path / DB_NAME
        if not self.db_path.is_file():
            raise ValueError(f"No workspace at {self.path} (missing {DB_NAME}).")
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- metadata
    @property
    def id(self) -> str:
        return self.path.name

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    def meta(self) -> dict:
        con = _connect(self.db_path)
        try:
            return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
        finally:
            con.close()

    @property
    def name(self) -> str:
        return self.meta().get("name", self.id)

    def settings(self) -> dict:
        """Encoders, k, p, templates and class names (defaults filled in)."""
        meta = self.meta()
        out = dict(DEFAULT_SETTINGS)
        out.update(meta.get("settings", {}))
        out.setdefault("classes", self.labels())
        if not out.get("classes"):
            out["classes"] = self.labels()
        return out

    def update_settings(self, **changes) -> dict:
        """Validate and store settings changes; returns the new settings."""
        if "k" in changes:
            k = int(changes["k"])
            if k < 1:
                raise ValueError("k must be at least 1.")
            changes["k"] = k
        if "p" in changes:
            p = float(changes["p"])
            if p < 1:
                raise ValueError("p must be at least 1.")
            changes["p"] = int(p) if p == int(p) else p
        if "templates" in changes:
            templates = [t.strip() for t in changes["templates"] if t and t.strip()]
            if not templates:
                raise ValueError("Give at least one prompt template, e.g. 'a photo of a {}.'")
            for t in templates:
                if t.count("{}") != 1:
                    raise ValueError(f"Template {t!r} must contain exactly one '{{}}' for the class name.")
            changes["templates"] = templates
        if "classes" in changes:
            classes = []
            for c in changes["classes"]:
                c = str(c).strip()
                if c and c not in classes:
                    classes.append(c)
            if len(classes) < 2:
                raise ValueError("Give at least two class names.")
            changes["classes"] = classes
        with self._lock, _Tx(self.db_path) as con:
            row = con.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
            current = json.loads(row[0]) if row else {}
            current.update(changes)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)", (json.dumps(current),))
        return self.settings()

    # ---------------------------------------------------------------- contents
    def all_pairs(self) -> list[Pair]:
        con = _connect(self.db_path)
        try:
            rows = con.execute("SELECT pair_id, image, caption, base FROM pairs ORDER BY pair_id").fetchall()
        finally:
            con.close()
        return [Pair(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def pairs(self) -> list[Pair]:
        """The active anchor pairs (base pairs plus additions, minus removals, after the log)."""
        active = self.active_pair_ids()
        return [p for p in self.all_pairs() if p.pair_id in active]

    def eval_items(self) -> list[EvalItem]:
        con = _connect(self.db_path)
        try:
            rows = con.execute("SELECT item_id, image, label FROM eval_items ORDER BY item_id").fetchall()
        finally:
            con.close()
        return [EvalItem(*r) for r in rows]

    def labels(self) -> list[str]:
        con = _connect(self.db_path)
        try:
            return [r[0] for r in con.execute("SELECT DISTINCT label FROM eval_items ORDER BY label")]
        finally:
            con.close()

    def counts(self) -> dict:
        active = self.active_pair_ids()
        con = _connect(self.db_path)
        try:
            n_all = con.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
            n_eval = con.execute("SELECT COUNT(*) FROM eval_items").fetchone()[0]
            n_edits = con.execute("SELECT COUNT(*) FROM edits").fetchone()[0]
        finally:
            con.close()
        return {"pairs": len(active), "pairs_total": n_all, "eval": n_eval, "edits": n_edits}

    def resolve(self, ref: str) -> Path:
        """Turn a stored image reference into a path on this machine."""
        if ref.startswith("demo:"):
            return demo_root() / ref[5:]
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
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return "ws:" + name

    # ---------------------------------------------------------------- edit log
    def edits(self) -> list[Edit]:
        con = _connect(self.db_path)
        try:
            rows = con.execute(
                "SELECT seq, kind, pair_ids, ref_seq, accuracy, per_class, note, created_at "
                "FROM edits ORDER BY seq").fetchall()
        finally:
            con.close()
        return [Edit(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4],
                     json.loads(r[5]) if r[5] else None, r[6], r[7]) for r in rows]

    @staticmethod
    def _replay(base_ids: Iterable[int], edits: Sequence[Edit]):
        """Active ids, undo stack and redo stack (lists of seqs of user edits) after the log."""
        active = set(base_ids)
        by_seq = {e.seq: e for e in edits}
        undo_stack: list[int] = []
        redo_stack: list[int] = []

        def apply(edit: Edit, inverse: bool):
            kind = edit.kind
            if inverse:
                kind = "add" if kind == "remove" else "remove"
            if kind == "remove":
                active.difference_update(edit.pair_ids)
            else:
                active.update(edit.pair_ids)

        for e in edits:
            if e.kind in ("remove", "add"):
                apply(e, False)
                undo_stack.append(e.seq)
                redo_stack.clear()
            elif e.kind == "undo":
                apply(by_seq[e.ref_seq], True)
                if undo_stack and undo_stack[-1] == e.ref_seq:
                    undo_stack.pop()
                redo_stack.append(e.ref_seq)
            elif e.kind == "redo":
                apply(by_seq[e.ref_seq], False)
                if redo_stack and redo_stack[-1] == e.ref_seq:
                    redo_stack.pop()
                undo_stack.append(e.ref_seq)
        return active, undo_stack, redo_stack, by_seq

    def _base_ids(self) -> frozenset:
        """The initial anchor set (immutable after creation, so cached per workspace)."""
        con = _connect(self.db_path)
        try:
            row = con.execute("SELECT value FROM meta WHERE key='created_at'").fetchone()
            key = (str(self.db_path), row[0] if row else None)
            base = _BASE_IDS.get(key)
            if base is None:
                base = frozenset(r[0] for r in con.execute("SELECT pair_id FROM pairs WHERE base=1"))
                _BASE_IDS[key] = base
        finally:
            con.close()
        return base

    def _state(self):
        return self._replay(self._base_ids(), self.edits())

    def active_pair_ids(self) -> set[int]:
        return self._state()[0]

    def can_undo(self) -> bool:
        return bool(self._state()[1])

    def can_redo(self) -> bool:
        return bool(self._state()[2])

    def _append(self, con, kind, pair_ids, ref_seq=None, accuracy=None, per_class=None, note=""):
        cur = con.execute(
            "INSERT INTO edits (kind, pair_ids, ref_seq, accuracy, per_class, note, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, json.dumps([int(i) for i in pair_ids]), ref_seq,
             None if accuracy is None else float(accuracy),
             None if per_class is None else json.dumps(per_class), note, time.time()))
        return cur.lastrowid

    def remove_pairs(self, pair_ids: Iterable[int], accuracy: float | None = None,
                     per_class: dict | None = None, note: str = "") -> int:
        """Commit the removal of active pairs; returns the edit's seq. Unknown/inactive ids raise."""
        ids = sorted({int(i) for i in pair_ids})
        if not ids:
            raise ValueError("Select at least one pair to remove.")
        with self._lock:
            active = self.active_pair_ids()
            missing = [i for i in ids if i not in active]
            if missing:
                raise ValueError(f"Pairs {missing[:5]} are not in the current anchor set.")
            if len(active) - len(ids) < 1:
                raise ValueError("That would leave no anchor pairs; keep at least one.")
            with _Tx(self.db_path) as con:
                return self._append(con, "remove", ids, accuracy=accuracy, per_class=per_class, note=note)

    def add_pairs(self, pairs: Sequence[tuple[str, str]], accuracy: float | None = None,
                  per_class: dict | None = None, note: str = "") -> tuple[int, list[int]]:
        """Insert new pairs ``(image_ref, caption)`` and activate them in one transaction.

        Returns ``(seq, new_pair_ids)``.
        """
        rows = [(str(img), str(cap).strip()) for img, cap in pairs]
        if not rows:
            raise ValueError("No pairs to add.")
        if any(not cap for _, cap in rows):
            raise ValueError("Every added pair needs a non-empty caption.")
        with self._lock, _Tx(self.db_path) as con:
            start = (con.execute("SELECT COALESCE(MAX(pair_id), -1) FROM pairs").fetchone()[0]) + 1
            new_ids = list(range(start, start + len(rows)))
            con.executemany("INSERT INTO pairs VALUES (?, ?, ?, 0)",
                            [(pid, img, cap) for pid, (img, cap) in zip(new_ids, rows)])
            seq = self._append(con, "add", new_ids, accuracy=accuracy, per_class=per_class, note=note)
        return seq, new_ids

    def next_pair_ids(self, n: int) -> list[int]:
        """The ids :meth:`add_pairs` would assign to ``n`` new pairs (for a what-if preview)."""
        con = _connect(self.db_path)
        try:
            start = con.execute("SELECT COALESCE(MAX(pair_id), -1) FROM pairs").fetchone()[0] + 1
        finally:
            con.close()
        return list(range(start, start + n))

    def peek_undo(self) -> Operation | None:
        """The operation an undo would perform (without doing it)."""
        _, undo_stack, _, by_seq = self._state()
        if not undo_stack:
            return None
        e = by_seq[undo_stack[-1]]
        return Operation("add" if e.kind == "remove" else "remove", e.pair_ids)

    def peek_redo(self) -> Operation | None:
        _, _, redo_stack, by_seq = self._state()
        if not redo_stack:
            return None
        e = by_seq[redo_stack[-1]]
        return Operation(e.kind, e.pair_ids)

    def undo(self, accuracy: float | None = None, per_class: dict | None = None) -> Operation:
        """Undo the latest user edit; returns the operation performed."""
        with self._lock:
            _, undo_stack, _, by_seq = self._state()
            if not undo_stack:
                raise ValueError("Nothing to undo.")
            target = by_seq[undo_stack[-1]]
            with _Tx(self.db_path) as con:
                self._append(con, "undo", target.pair_ids, ref_seq=target.seq,
                             accuracy=accuracy, per_class=per_class)
        return Operation("add" if target.kind == "remove" else "remove", target.pair_ids)

    def redo(self, accuracy: float | None = None, per_class: dict | None = None) -> Operation:
        with self._lock:
            _, _, redo_stack, by_seq = self._state()
            if not redo_stack:
                raise ValueError("Nothing to redo.")
            target = by_seq[redo_stack[-1]]
            with _Tx(self.db_path) as con:
                self._append(con, "redo", target.pair_ids, ref_seq=target.seq,
                             accuracy=accuracy, per_class=per_class)
        return Operation(target.kind, target.pair_ids)

    def set_edit_accuracy(self, seq: int, accuracy: float, per_class: dict | None = None) -> None:
        """Fill in the accuracy after edit ``seq`` (when it was measured after committing)."""
        with _Tx(self.db_path) as con:
            con.execute("UPDATE edits SET accuracy=?, per_class=? WHERE seq=?",
                        (float(accuracy), None if per_class is None else json.dumps(per_class), int(seq)))

    def set_baseline_accuracy(self, accuracy: float, per_class: dict | None = None) -> None:
        """Remember the accuracy of the unedited anchor set (first point of the timeline)."""
        with _Tx(self.db_path) as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('baseline', ?)",
                        (json.dumps({"accuracy": float(accuracy), "per_class": per_class,
                                     "settings": _settings_key(self.settings())}),))

    def baseline_accuracy(self) -> float | None:
        b = self.meta().get("baseline")
        if not b or b.get("settings") != _settings_key(self.settings()):
            return None
        return b.get("accuracy")

    def history(self) -> list[dict]:
        """Timeline rows: step, what happened, how many pairs, accuracy after it."""
        out = []
        baseline = self.meta().get("baseline")
        out.append({"step": 0, "edit": "start", "pairs": 0,
                    "accuracy": baseline.get("accuracy") if baseline else None, "note": ""})
        for i, e in enumerate(self.edits(), 1):
            what = e.kind if e.ref_seq is None else f"{e.kind} #{e.ref_seq}"
            out.append({"step": i, "seq": e.seq, "edit": what, "pairs": len(e.pair_ids),
                        "accuracy": e.accuracy, "note": e.note})
        return out

    # ---------------------------------------------------------------- export
    def export_pairs_csv(self) -> bytes:
        """The curated (active) pair list as CSV bytes: ``pair_id,image,caption``."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["pair_id", "image", "caption"])
        for p in self.pairs():
            writer.writerow([p.pair_id, str(self.resolve(p.image)), p.caption])
        return buf.getvalue().encode("utf-8")


def _settings_key(settings: dict) -> str:
    keys = ("image_encoder", "text_encoder", "k", "p", "templates", "classes")
    return json.dumps({k: settings.get(k) for k in keys}, sort_keys=True)


# -------------------------------------------------------------------- create / list / delete
def _create(root: Path, name: str, pairs: Sequence[tuple[str, str]], eval_items: Sequence[tuple[str, str]],
            settings: dict | None, source: dict) -> Workspace:
    root = Path(root) if root is not None else workspaces_root()
    wid = slugify(name)
    path = root / wid
    if path.exists():
        raise ValueError(f"A workspace named {name!r} already exists; pick another name.")
    if not pairs:
        raise ValueError("A workspace needs at least one anchor pair (image + caption).")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{wid}.creating-{os.getpid()}-{threading.get_ident()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    merged = dict(DEFAULT_SETTINGS)
    merged.update(settings or {})
    con = _connect(tmp / DB_NAME)
    try:
        con.execute("BEGIN")
        for stmt in _SCHEMA.strip().split(";"):
            if stmt.strip():
                con.execute(stmt)
        con.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("schema", json.dumps(SCHEMA_VERSION)), ("name", json.dumps(name)),
            ("created_at", json.dumps(time.time())), ("source", json.dumps(source)),
            ("settings", json.dumps(merged))])
        con.executemany("INSERT INTO pairs VALUES (?, ?, ?, 1)",
                        [(i, str(img), str(cap)) for i, (img, cap) in enumerate(pairs)])
        con.executemany("INSERT INTO eval_items VALUES (?, ?, ?)",
                        [(i, str(img), str(lab)) for i, (img, lab) in enumerate(eval_items)])
        con.execute("COMMIT")
    except BaseException:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    con.close()
    os.replace(tmp, path)  # atomic: a half-created workspace is never visible
    return Workspace(path)


def create_workspace(name: str, pairs: Sequence[tuple[str, str]], eval_items: Sequence[tuple[str, str]] = (),
                     settings: dict | None = None, root: str | Path | None = None,
                     source: dict | None = None) -> Workspace:
    """Create a workspace from ``(image_ref, caption)`` pairs and ``(image_ref, label)`` items."""
    return _create(root, name, pairs, eval_items, settings, source or {"kind": "custom"})


#: The demo evaluates on the first 100 CIFAR-10 test images of each class by default, so that a cold
#: start embeds 8,000 images rather than 17,000; ``ROSETTA_DEMO_PER_CLASS=1000`` takes all of them.
DEMO_PER_CLASS = 100


def demo_sizes() -> tuple[int | None, int | None]:
    """Demo size: ``ROSETTA_DEMO_IMAGES`` Flickr8k images (default all) and
    ``ROSETTA_DEMO_PER_CLASS`` CIFAR-10 test images per class (default :data:`DEMO_PER_CLASS`)."""
    def read(var, default):
        v = os.environ.get(var, "").strip()
        return int(v) if v else default
    return read("ROSETTA_DEMO_IMAGES", None), read("ROSETTA_DEMO_PER_CLASS", DEMO_PER_CLASS)


def demo_pairs_and_eval(n_images: int | None = None, per_class: int | None = None,
                        data_root: str | Path | None = None):
    """Flickr8k pairs of the first ``n_images`` images (caption-file order) and the first
    ``per_class`` CIFAR-10 test images of each class (sorted by file name). None = all.

    Read through :mod:`core.data`'s validating loaders; returns workspace refs
    ``("demo:flickr8k/images/<name>", caption)`` and ``("demo:cifar10/test/<class>/<name>", class)``.
    """
    from core.data import load_labeled, load_pairs_folder

    data_root = Path(data_root) if data_root is not None else demo_root()
    flickr, test_dir = data_root / "flickr8k", data_root / "cifar10" / "test"
    if not (flickr / "captions.csv").is_file() or not test_dir.is_dir():
        raise ValueError(
            f"Demo data not found under {data_root}: expected flickr8k/captions.csv, flickr8k/images/ "
            "and cifar10/test/<class>/*.jpg. Set ROSETTA_DATA to the folder that holds them.")
    pair_set = load_pairs_folder(flickr)
    if n_images is not None:
        pair_set = pair_set.first_images(n_images)
    pairs = [(f"demo:{Path(pair_set.images[i]).relative_to(data_root).as_posix()}", caption)
             for i, caption in zip(pair_set.pair_image.tolist(), pair_set.captions)]
    labeled = load_labeled(test_dir, limit_per_class=per_class)
    eval_items = [(f"demo:{Path(path).relative_to(data_root).as_posix()}", labeled.class_names[label])
                  for path, label in zip(labeled.paths, labeled.labels.tolist())]
    return pairs, eval_items


def create_demo_workspace(name: str = "demo", n_images: int | None = None, per_class: int | None = None,
                          root: str | Path | None = None, settings: dict | None = None) -> Workspace:
    """Flickr8k pairs as anchors, CIFAR-10 test as the evaluation set (sizes: see demo_sizes)."""
    if n_images is None and per_class is None:
        n_images, per_class = demo_sizes()
    pairs, eval_items = demo_pairs_and_eval(n_images, per_class)
    s = {"classes": sorted({lab for _, lab in eval_items})}
    s.update(settings or {})
    return _create(root, name, pairs, eval_items, s,
                   {"kind": "demo", "n_images": n_images, "per_class": per_class})


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


def create_from_pairset(name: str, pairset, eval_items: Sequence[tuple[str, str]], copy: bool,
                        root: str | Path | None = None, settings: dict | None = None,
                        source: dict | None = None) -> Workspace:
    """A workspace whose anchors are a loaded ``PairSet`` (uploads: ``copy=True``; a folder: False).

    ``eval_items`` are ``(image_ref, label)``; refs may be ``demo:``/absolute paths."""
    if pairset is None or len(pairset) == 0:
        raise ValueError("No valid image-caption pairs to create a workspace from.")
    labels = sorted({lab for _, lab in eval_items})
    s = {"classes": labels} if len(labels) >= 2 else {}
    s.update(settings or {})
    if copy:
        # create with placeholder refs, then store the files inside the new workspace
        ws = _create(root, name, [("pending", c) for c in pairset.captions], eval_items, s,
                     source or {"kind": "upload"})
        try:
            rows = refs_from_pairset(pairset, ws, copy=True)
            with _Tx(ws.db_path) as con:
                con.executemany("UPDATE pairs SET image=? WHERE pair_id=?",
                                [(ref, i) for i, (ref, _) in enumerate(rows)])
        except BaseException:
            delete_workspace(ws)
            raise
        return ws
    return _create(root, name, refs_from_pairset(pairset), eval_items, s, source or {"kind": "folder"})


def eval_items_from_labeled(labeled) -> list[tuple[str, str]]:
    """``(absolute path, class name)`` rows of a ``core.data.LabeledSet``."""
    return [(str(Path(p).resolve()), labeled.class_names[int(y)])
            for p, y in zip(labeled.paths, labeled.labels.tolist())]


def demo_eval_items(per_class: int | None = None) -> list[tuple[str, str]]:
    """The CIFAR-10 test images of the demo data (first ``per_class`` per class)."""
    return demo_pairs_and_eval(0, per_class)[1]


def list_workspaces(root: str | Path | None = None) -> list[Workspace]:
    root = Path(root) if root is not None else workspaces_root()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / DB_NAME).is_file():
            out.append(Workspace(d))
    return out


def open_workspace(wid: str, root: str | Path | None = None) -> Workspace:
    root = Path(root) if root is not None else workspaces_root()
    return Workspace(root / slugify(wid))


def duplicate_workspace(ws: Workspace, new_name: str) -> Workspace:
    """Copy a workspace (pairs, evaluation set, settings, full edit history, uploaded files)."""
    root = ws.path.parent
    wid = slugify(new_name)
    target = root / wid
    if target.exists():
        raise ValueError(f"A workspace named {new_name!r} already exists; pick another name.")
    tmp = root / f".{wid}.copying-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = _connect(ws.db_path)
    dst = sqlite3.connect(str(tmp / DB_NAME))
    try:
        src.backup(dst)  # consistent snapshot even while another session writes
    finally:
        src.close()
        dst.close()
    for folder in ("files", "state"):  # uploaded images; the engine snapshot (opens instantly)
        if (ws.path / folder).is_dir():
            shutil.copytree(ws.path / folder, tmp / folder)
    con = _connect(tmp / DB_NAME)
    try:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (json.dumps(new_name),))
    finally:
        con.close()
    os.replace(tmp, target)
    return Workspace(target)


def delete_workspace(ws: Workspace) -> None:
    """Delete a workspace folder (its vectors stay in the shared cache)."""
    trash = ws.path.parent / f".{ws.id}.deleting-{os.getpid()}"
    os.replace(ws.path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ==================================================================== the live model of a workspace
#
# ``Bank``: the immutable vectors of a workspace under given settings (every pair it ever held, the
# evaluation set, the class prompts), read from the embedding cache (only missing ones are computed).
# Shareable between sessions (the app keeps it in ``st.cache_resource``).
# ``LiveModel``: the current anchor set as a :class:`core.edits.EditSession` (helper B's incremental
# engine) that mirrors the workspace's edit log; every edit re-scores the evaluation set in ms.

import numpy as np  # noqa: E402


def settings_key(settings: dict) -> str:
    return _settings_key(settings)


_THREADS: list[threading.Thread] = []


def start_thread(target, name: str, *args) -> threading.Thread:
    """A daemon worker that the interpreter waits for at exit (a worker killed inside numpy/torch
    at shutdown can abort the process)."""
    t = threading.Thread(target=target, args=args, daemon=True, name=name)
    _THREADS[:] = [x for x in _THREADS if x.is_alive()] + [t]
    t.start()
    return t


def _join_workers() -> None:
    deadline = time.time() + 30
    for t in list(_THREADS):
        t.join(timeout=max(0.0, deadline - time.time()))


# Join before the interpreter starts tearing down (a worker may still import modules then);
# threading's own exit hook runs before atexit handlers.
try:
    threading._register_atexit(_join_workers)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons
    atexit.register(_join_workers)


class _LazyEncoder:
    """A built-in encoder's cache identity without loading its weights (loaded on first encode).

    ``core.cache.embed`` only needs ``cache_id``/``modality``/``dim`` to look vectors up, so a fully
    cached workspace opens without importing torch models at all.
    """

    _FAMILY = {"efficientnet-lite0": "efficientnet-lite", "efficientnet-lite2": "efficientnet-lite",
               "minilm": "sentence-transformers", "mpnet": "sentence-transformers"}

    def __init__(self, name: str):
        from core import encoders

        self.name = name
        self._real = None
        info = encoders.BUILTIN_ENCODERS.get(name)
        if info is None or name not in self._FAMILY:
            self._real = encoders.get_encoder(name)
            self.modality, self.dim, self.cache_id = self._real.modality, self._real.dim, self._real.cache_id
        else:
            self.modality, self.dim = info.modality, info.dim
            self.cache_id = f"{name}|{encoders.PREPROCESS_VERSION[self._FAMILY[name]]}"

    def encode(self, items, batch_size=None, progress=None):
        if self._real is None:
            from core.encoders import get_encoder

            self._real = get_encoder(self.name)
            if self._real.cache_id != self.cache_id:  # pragma: no cover - guards a format change
                raise RuntimeError(f"cache id of {self.name} changed: {self._real.cache_id}")
        return self._real.encode(items, batch_size=batch_size, progress=progress)


_LAZY: dict[str, _LazyEncoder] = {}


def lazy_encoder(name: str) -> _LazyEncoder:
    if name not in _LAZY:
        _LAZY[name] = _LazyEncoder(name)
    return _LAZY[name]


def _embed_images(name: str, paths: Sequence[str], progress=None) -> np.ndarray:
    from core.cache import embed

    enc = lazy_encoder(name)
    if not paths:
        return np.zeros((0, enc.dim), np.float32)
    return embed(enc, list(paths), progress=progress).vectors


def _embed_texts(name: str, texts: Sequence[str], progress=None) -> np.ndarray:
    from core.cache import embed

    enc = lazy_encoder(name)
    if not texts:
        return np.zeros((0, enc.dim), np.float32)
    return embed(enc, list(texts), progress=progress).vectors


class Bank:
    """Vectors of one workspace under its settings (immutable once built; extend with :meth:`extended`).

    ``pair_ids [P]`` every pair the workspace holds (active or not) with ``pair_refs``/``captions``;
    ``img [U, di]`` unique anchor images and ``pair_img [P]`` the image row of each pair;
    ``cap [P, dt]`` caption vectors; ``eval_vecs [Q, di]``, ``eval_labels [Q]`` (index into
    ``classes``; items whose label is not a class are left out); ``prompts [C*T, dt]`` with
    ``prompt_classes [C*T]`` (class x template prompts, see ``core.asif.build_prompts``).
    """

    def __init__(self, ws: Workspace, progress: Callable[[float, str], None] | None = None):
        from core.asif import build_prompts

        report = progress or (lambda f, m: None)
        self._read_layout(ws)
        s = self.settings
        paths = [str(ws.resolve(r)) for r in self.img_refs]
        eval_paths = [str(ws.resolve(r)) for r in self.eval_refs]
        missing = [p for p in paths + eval_paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"{len(missing)} image(s) of this workspace are missing, e.g. {missing[0]}; "
                             "was the data folder moved? (set ROSETTA_DATA)")
        n_img, n_eval, n_cap = len(paths), len(eval_paths), len(self.captions)
        # progress weights: images dominate (captions are ~50x cheaper to encode)
        total = max(1.0, n_img + n_eval + n_cap / 50)

        def stage(offset, weight, label):
            return lambda d, t: report(min(0.99, (offset + weight * d / max(t, 1)) / total),
                                       f"{label}: {d:,} of {t:,} not yet cached")

        report(0.0, f"Looking up {n_img:,} anchor images in the embedding cache")
        self.img = _embed_images(s["image_encoder"], paths, stage(0, n_img, "Embedding anchor images"))
        report(n_img / total, f"Looking up {n_eval:,} evaluation images")
        self.eval_vecs = _embed_images(s["image_encoder"], eval_paths,
                                       stage(n_img, n_eval, "Embedding evaluation images"))
        report((n_img + n_eval) / total, f"Looking up {n_cap:,} captions")
        self.cap = _embed_texts(s["text_encoder"], self.captions,
                                stage(n_img + n_eval, n_cap / 50, "Embedding captions"))
        prompts, self.prompt_classes = build_prompts(self.classes, self.templates)
        self.prompts = _embed_texts(s["text_encoder"], prompts)
        report(1.0, "Embeddings ready")

    @classmethod
    def without_vectors(cls, ws: Workspace) -> "Bank":
        """The workspace's pairs, evaluation items and settings with no vectors yet (for benchmarks
        that fill in synthetic ``img``, ``cap``, ``eval_vecs``, ``prompts``)."""
        bank = object.__new__(cls)
        bank._read_layout(ws)
        return bank

    def _read_layout(self, ws: Workspace) -> None:
        self.ws_path = ws.path
        self.settings = ws.settings()
        self.key = _settings_key(self.settings)
        s = self.settings
        self.k, self.p = int(s["k"]), float(s["p"])
        self.classes = list(s["classes"])
        self.templates = list(s["templates"])
        pairs = ws.all_pairs()
        self.pair_ids = np.array([p.pair_id for p in pairs], dtype=np.int64)
        self.pos_of = {int(pid): i for i, pid in enumerate(self.pair_ids)}
        self.captions = [p.caption for p in pairs]
        self.pair_refs = [p.image for p in pairs]
        unique: dict[str, int] = {}
        self.pair_img = np.array([unique.setdefault(r, len(unique)) for r in self.pair_refs], dtype=np.int64)
        self.img_refs = list(unique)
        label_index = {c: i for i, c in enumerate(self.classes)}
        items = [e for e in ws.eval_items() if e.label in label_index]
        self.eval_refs = [e.image for e in items]
        self.eval_labels = np.array([label_index[e.label] for e in items], dtype=np.int64)

    @property
    def pair_vecs(self) -> np.ndarray:
        """``[P, di]`` image vector of every pair."""
        return self.img[self.pair_img]

    def metadata(self, positions: Iterable[int]) -> list[dict]:
        return [{"image": self.pair_refs[i], "caption": self.captions[i]} for i in positions]

    def embed_query(self, image) -> np.ndarray:
        """``[di]`` for a PIL image, a file path or image bytes (``ValueError`` if unreadable)."""
        from core.encoders import load_image

        if isinstance(image, (bytes, bytearray)):
            image = load_image(bytes(image))
        elif isinstance(image, Path):
            image = str(image)
        if isinstance(image, str) and not os.path.isfile(image):
            raise ValueError(f"cannot read image {image}")
        return _embed_images(self.settings["image_encoder"], [image])[0]

    def extended(self, ws: Workspace) -> "Bank":
        """A new bank with the pairs ``ws`` gained since this one was built (only they are embedded)."""
        new = [p for p in ws.all_pairs() if int(p.pair_id) not in self.pos_of]
        out = object.__new__(Bank)
        out.__dict__.update(self.__dict__)
        if not new:
            return out
        out.pair_ids = np.concatenate([self.pair_ids, [p.pair_id for p in new]]).astype(np.int64)
        out.pos_of = {int(pid): i for i, pid in enumerate(out.pair_ids)}
        out.captions = self.captions + [p.caption for p in new]
        out.pair_refs = self.pair_refs + [p.image for p in new]
        unique = {r: i for i, r in enumerate(self.img_refs)}
        fresh = []
        idx = []
        for p in new:
            if p.image not in unique:
                unique[p.image] = len(unique)
                fresh.append(p.image)
            idx.append(unique[p.image])
        out.img_refs = self.img_refs + fresh
        out.pair_img = np.concatenate([self.pair_img, idx]).astype(np.int64)
        vecs = _embed_images(self.settings["image_encoder"], [str(ws.resolve(r)) for r in fresh])
        out.img = np.concatenate([self.img, vecs]) if len(fresh) else self.img
        out.cap = np.concatenate([self.cap, _embed_texts(self.settings["text_encoder"],
                                                          [p.caption for p in new])])
        return out


# ---------------------------------------------------------------------- engine snapshots
# Building the engine means finding every evaluation image's and class prompt's nearest anchors
# (seconds at 35k anchors x 10k images). The result only depends on the vectors, the live pairs and
# k, so it is kept next to the workspace as plain arrays (``state/neighbours-<fingerprint>.npz``, no
# pickles) and a later start loads it instead of recomputing.

def _fingerprint(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        step = max(1, len(a) // 512) if a.ndim else 1
        h.update(np.ascontiguousarray(a[::step] if a.ndim else a).tobytes())
    return h.hexdigest()[:24]


def _snapshot_path(bank: "Bank", pos: np.ndarray, k: int) -> Path:
    key = _fingerprint(bank.img, bank.pair_img[pos], bank.cap[pos], bank.eval_vecs, bank.prompts,
                       bank.prompt_classes, bank.pair_ids[pos], np.array([k, bank.p]))
    return Path(bank.ws_path) / "state" / f"neighbours-{key}.npz"


def _session_with_snapshot(path: Path, build):
    """``build(neighbours)`` an EditSession, reusing the neighbour lists saved at ``path`` (keyed by
    a fingerprint of the inputs) and saving them there after a fresh build."""
    saved = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                saved = {k: f[k] for k in f.files}
        except (OSError, ValueError):
            saved = None
    session = build(saved)
    if saved is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob("neighbours-*.npz"):
                old.unlink(missing_ok=True)  # one snapshot per workspace is enough
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **session.neighbour_state())
            os.replace(tmp, path)
        except OSError:
            pass  # the snapshot is an optimisation only
    return session


class LiveModel:
    """The workspace's current anchor set as an incremental :class:`core.edits.EditSession`.

    ``accuracy``/``per_class`` describe the evaluation set now; :meth:`remove`, :meth:`add` and
    :meth:`apply` (for undo/redo operations) re-score it in milliseconds. ``k`` is clamped to half
    the active pairs, so that pairs can still be removed from a small workspace (``k_clamped``
    tells when).
    """

    def __init__(self, bank: Bank, active_ids: Iterable[int], progress=None):
        from core.asif import AsifModel
        from core.edits import EditSession

        self.bank = bank
        active = sorted(int(i) for i in active_ids if int(i) in bank.pos_of)
        if not active:
            raise ValueError("This workspace has no anchor pairs left; add some on the Curate page.")
        if len(bank.eval_labels) == 0:
            raise ValueError("This workspace has no labeled evaluation images for its classes; add "
                             "some on the Data page or change the class list in Settings.")
        pos = np.array([bank.pos_of[i] for i in active], dtype=np.int64)
        self.k = min(bank.k, max(1, len(active) // 2))
        self.k_clamped = self.k < bank.k
        model = AsifModel(bank.img[bank.pair_img[pos]], bank.cap[pos], bank.pair_ids[pos],
                          bank.metadata(pos), k=self.k, p=bank.p,
                          info={"image_encoder": bank.settings["image_encoder"],
                                "text_encoder": bank.settings["text_encoder"]})
        snap_path = _snapshot_path(bank, pos, self.k)
        self.session = _session_with_snapshot(
            snap_path, lambda saved: EditSession(model, bank.eval_vecs, bank.eval_labels, bank.prompts,
                                                 bank.prompt_classes, class_names=bank.classes,
                                                 neighbours=saved, progress=progress))
        self.version = 0
        self._model = None
        self.lock = threading.RLock()  # serialises edits (the app's sessions share this model)
        self._influence_state = {"rows": None, "version": None, "running": False, "target": None,
                                 "error": None, "elapsed_s": None}
        self.last = None  # EditResult of the latest edit

    # ------------------------------------------------------------------ state
    @property
    def accuracy(self) -> float:
        return self.session.accuracy

    @property
    def per_class(self) -> dict:
        return {c: float(a) for c, a in zip(self.bank.classes, self.session.per_class_accuracy)}

    @property
    def n_anchors(self) -> int:
        return self.session.n_anchors

    def active_ids(self) -> set[int]:
        return {int(i) for i in self.session.pair_ids}

    def current_model(self):
        """The live pairs as a :class:`core.asif.AsifModel` (cached until the next edit)."""
        if self._model is None or self._model[0] != self.version:
            self._model = (self.version, self.session.current_model())
        return self._model[1]

    def _edited(self, result):
        self.version += 1
        self.last = result
        return result

    # ------------------------------------------------------------------ edits
    def what_if_remove(self, pair_ids: Iterable[int]):
        """``EditResult`` of removing these pairs, nothing committed."""
        return self.session.what_if_remove(list(pair_ids))

    def remove(self, pair_ids: Iterable[int]):
        return self._edited(self.session.remove(list(pair_ids)))

    def add(self, bank: Bank, pair_ids: Sequence[int]):
        """Add pairs that ``bank`` (an extension of this model's bank) holds."""
        pos = np.array([bank.pos_of[int(i)] for i in pair_ids], dtype=np.int64)
        self.bank = bank
        return self._edited(self.session.add(bank.img[bank.pair_img[pos]], bank.cap[pos],
                                             pair_ids=np.asarray(pair_ids, dtype=np.int64),
                                             metadata=bank.metadata(pos)))

    def undo(self):
        return self._edited(self.session.undo())

    def redo(self):
        return self._edited(self.session.redo())

    # ------------------------------------------------------------------ single images
    def explain(self, q: np.ndarray):
        """:class:`core.asif.Explanation` of one image vector ``[di]`` under the live pairs."""
        b = self.bank
        return self.current_model().explain(q, b.prompts, b.prompt_classes, class_names=b.classes)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        from core.asif import softmax

        return softmax(np.asarray(scores)[None], self.session.temperature)[0]

    def eval_predictions(self) -> np.ndarray:
        return self.session.predictions

    # ------------------------------------------------------------------ influence
    def influence(self, progress=None) -> list[dict]:
        """Rows most harmful first (see ``core.edits.Influence``), for the current version (blocking)."""
        self.start_influence()
        while True:
            rows, version, running = self.influence_snapshot()
            if rows is not None and version == self.version:
                return rows
            if not running:
                self.start_influence()
            time.sleep(0.02)

    def influence_snapshot(self):
        """``(rows or None, version they describe, computing?)`` without waiting.

        The rows may describe an earlier version (the table stays visible while it is refreshed in
        the background after an edit)."""
        st_ = self._influence_state
        return st_["rows"], st_["version"], st_["running"]

    def start_influence(self) -> None:
        """Compute the influence table for the current version in a background thread, on a copy
        of the engine (edits stay instant meanwhile)."""
        import copy

        st_ = self._influence_state
        with self.lock:
            if st_["version"] == self.version and st_["rows"] is not None:
                return
            if st_["running"] and st_["target"] == self.version:
                return
            snapshot = copy.deepcopy(self.session)
            target = self.version
            st_["running"], st_["target"] = True, target

        def work():
            try:
                inf = snapshot.influence()
                rows = inf.rows(inf.order_most_harmful(), snapshot.metadata_by_id())
                with self.lock:
                    if st_["version"] is None or target >= st_["version"]:
                        st_["rows"], st_["version"], st_["elapsed_s"] = rows, target, inf.elapsed_s
            except Exception as error:  # noqa: BLE001 - reported through the snapshot
                st_["error"] = f"{type(error).__name__}: {error}"
            finally:
                with self.lock:
                    if st_["target"] == target:
                        st_["running"] = False

        start_thread(work, "rosetta-influence")


def sync_live_model(ws: Workspace, live: LiveModel) -> bool:
    """True when ``live`` holds exactly the workspace's active pairs (else the caller rebuilds)."""
    return live.active_ids() == ws.active_pair_ids()

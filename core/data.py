"""Datasets: image–caption pair sets and labeled image sets, with a validation report.

Loaders (each returns a set whose ``.report`` lists every problem; bad items are skipped, the rest
loads; they raise ``ValueError`` only when the source itself cannot be found or opened):

* :func:`load_pairs` — dispatches on the source: a folder with ``captions.csv`` (``image,caption``;
  the Flickr8k layout), a CSV file, a COCO captions JSON, or a zip (path or bytes) holding images and
  a CSV (or a COCO JSON).
* :func:`stage_uploads` — uploaded files (one zip, or images + a CSV) as a pair set, in a staging
  folder that is removed when the pair set is no longer used (:class:`Staging`).
* :func:`load_labeled` — class-per-folder image sets (``<root>/<class>/*.jpg``, the CIFAR-10 layout).
* :func:`allowed_folder` — a user-given folder, accepted only under :func:`allowed_roots`.
* :func:`data_dir` / :func:`demo_sources` — where the demo data lives (``ROSETTA_DATA``, else
  ``../shared/data`` next to the project).

Every image is fully decoded (within the pixel limit, JPEGs at reduced DCT scale) before it is
accepted, so a truncated file never reaches a workspace. Inputs are streamed and bounded by the
limits below (environment variables, read at call time); no message quotes a file's contents.

A :class:`PairSet` holds one pair per (image, caption) row: ``captions[P]``, ``pair_image[P]``
(index into the distinct ``images``), stable ``pair_ids[P]``; ``image_keys`` are the SHA-256 digests
of the image bytes (the embedding-cache keys). A :class:`LabeledSet` holds ``paths[n]``,
``labels[n]``, ``class_names`` and ``keys[n]``.

The :class:`ValidationReport` is a list of :class:`Problem` (``kind``, ``item``, ``message``,
``severity``) plus counts; ``report.to_dict()`` / ``report.rows()`` are ready for a table.
Problem kinds: ``missing_file``, ``missing_column``, ``empty_caption``, ``missing_image``,
``not_image``, ``corrupt_image``, ``too_many_pixels``, ``non_utf8``, ``unsafe_path``,
``link_entry``, ``too_large``, ``too_long``, ``bad_csv``, ``bad_quote``, ``bad_zip``,
``bad_entry``, ``encrypted_entry``, ``name_clash``, ``bad_value``, ``duplicate_pair``,
``duplicate_image``, ``empty_class``, ``bad_json``, ``ignored_file``, ``encoding``.
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import shutil
import stat
import time
import uuid
import weakref
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from core.encoders import DEFAULT_MAX_PIXELS


def _limit(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


#: Limits (environment variable, default); the README's variable table lists them.
MAX_ZIP_BYTES = _limit("ROSETTA_MAX_ZIP_BYTES", 1024**3)  # bytes extracted from one zip / upload
MAX_ZIP_ENTRIES = _limit("ROSETTA_MAX_ZIP_ENTRIES", 100_000)
MAX_ZIP_RATIO = _limit("ROSETTA_MAX_ZIP_RATIO", 200)  # uncompressed / compressed size of one entry
MAX_IMAGE_FILE_BYTES = _limit("ROSETTA_MAX_IMAGE_BYTES", 50 * 1024**2)
MAX_ROWS = _limit("ROSETTA_MAX_ROWS", 1_000_000)  # caption rows (CSV) or annotations (COCO)
MAX_CAPTION_BYTES = _limit("ROSETTA_MAX_CAPTION_BYTES", 2000)  # longer captions: the row is skipped
MAX_JSON_BYTES = _limit("ROSETTA_MAX_JSON_BYTES", 256 * 1024**2)
MAX_REPORTED = 1000  # problems of one kind listed in a report; the rest are counted
#: Longest physical CSV line read (characters); longer lines are skipped without being held.
_MAX_LINE_EXTRA = 4096

EXPECTED_LAYOUT = """\
Expected demo data layout (set ROSETTA_DATA to its folder; default ../shared/data next to the project):
  <data>/flickr8k/images/*.jpg        the images
  <data>/flickr8k/captions.csv        header 'image,caption', one row per caption (UTF-8)
  <data>/cifar10/test/<class>/*.jpg   labeled evaluation images, one folder per class
  <data>/cifar10/train/<class>/*.jpg  (optional) in-domain training images"""

ERROR = "error"
WARNING = "warning"


# ---------------------------------------------------------------------------------------- report

@dataclass
class Problem:
    """One finding: ``kind`` (machine-readable), ``item`` (file / row), ``message`` (for people)."""

    kind: str
    item: str
    message: str
    severity: str = ERROR  # "error": the item was skipped/rejected; "warning": reported only

    def to_dict(self) -> dict:
        return {"kind": self.kind, "item": self.item, "message": self.message,
                "severity": self.severity}


@dataclass
class ValidationReport:
    """What a loader found: the problems and the counts of what loaded. At most
    :data:`MAX_REPORTED` problems of one kind are listed; ``by_kind()`` counts all of them."""

    source: str = ""
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    fatal: bool = False  # nothing could be loaded (e.g. missing columns)
    totals: Counter = field(default_factory=Counter)  # problems per kind, listed or not

    def add(self, kind: str, item: Any, message: str, severity: str = ERROR) -> None:
        self.totals[kind] += 1
        if self.totals[kind] <= MAX_REPORTED:
            self.problems.append(Problem(kind, str(item), message, severity))

    @property
    def ok(self) -> bool:
        return not self.fatal and not any(p.severity == ERROR for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def by_kind(self) -> dict[str, int]:
        return dict(self.totals)

    def kinds(self) -> set[str]:
        return set(self.totals)

    def items(self, kind: str) -> list[str]:
        return [p.item for p in self.problems if p.kind == kind]

    def rows(self) -> list[dict]:
        """Problems as dicts, for a table."""
        return [p.to_dict() for p in self.problems]

    def to_dict(self) -> dict:
        return {"source": self.source, "ok": self.ok, "fatal": self.fatal, "counts": dict(self.counts),
                "problem_counts": self.by_kind(), "problems": self.rows()}

    def summary(self) -> str:
        loaded = ", ".join(f"{v:,} {k}" for k, v in self.counts.items())
        if not self.totals:
            return f"{loaded}; no problems"
        issues = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in sorted(self.by_kind().items()))
        return f"{loaded}; {sum(self.totals.values()):,} problem(s): {issues}"

    def merge(self, other: "ValidationReport") -> None:
        self.problems.extend(other.problems)
        self.totals.update(other.totals)
        self.fatal = self.fatal or other.fatal


# ------------------------------------------------------------------------------------------ sets

@dataclass
class PairSet:
    """Image–caption pairs. Shapes: ``images[I]``, ``captions[P]``, ``pair_image[P]`` -> image row."""

    images: list[str]  # absolute paths of distinct images
    image_names: list[str]  # names as the source gives them (relative)
    image_keys: list[bytes]  # SHA-256 of the image bytes (cache keys)
    captions: list[str]
    pair_image: np.ndarray  # int64 [P]
    pair_ids: list[str]
    report: ValidationReport
    root: str = ""
    staging: "Staging | None" = None  # the folder holding the files, when they are staged copies

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def pair_paths(self) -> list[str]:
        """Image path per pair ``[P]``."""
        return [self.images[i] for i in self.pair_image.tolist()]

    def captions_of(self, image_index: int) -> list[int]:
        return np.nonzero(self.pair_image == image_index)[0].tolist()

    def subset(self, pair_indices: Iterable[int]) -> "PairSet":
        """A PairSet with the chosen pairs (images renumbered; same report)."""
        sel = np.asarray(list(pair_indices), dtype=np.int64)
        used = list(dict.fromkeys(self.pair_image[sel].tolist()))
        remap = {old: new for new, old in enumerate(used)}
        return PairSet(
            images=[self.images[i] for i in used], image_names=[self.image_names[i] for i in used],
            image_keys=[self.image_keys[i] for i in used],
            captions=[self.captions[i] for i in sel.tolist()],
            pair_image=np.array([remap[i] for i in self.pair_image[sel].tolist()], dtype=np.int64),
            pair_ids=[self.pair_ids[i] for i in sel.tolist()], report=self.report, root=self.root,
            staging=self.staging)

    def first_images(self, n_images: int) -> "PairSet":
        """The pairs of the first ``n_images`` distinct images (all their captions)."""
        return self.subset(np.nonzero(self.pair_image < n_images)[0])


@dataclass
class LabeledSet:
    """Labeled images: ``paths[n]``, ``labels[n]`` (int64 into ``class_names``), ``keys[n]``."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    keys: list[bytes]
    report: ValidationReport
    root: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Iterable[int]) -> "LabeledSet":
        sel = np.asarray(list(indices), dtype=np.int64)
        return LabeledSet([self.paths[i] for i in sel.tolist()], self.labels[sel], list(self.class_names),
                          [self.keys[i] for i in sel.tolist()], self.report, self.root)

    def per_class(self, n: int) -> "LabeledSet":
        """The first ``n`` images of every class."""
        picked: list[int] = []
        seen: Counter = Counter()
        for i, label in enumerate(self.labels.tolist()):
            if seen[label] < n:
                seen[label] += 1
                picked.append(i)
        return self.subset(picked)


# ------------------------------------------------------------------------------------ staging

class Staging:
    """A private folder for extracted / uploaded files, ``<cache>/uploads/<pid>-<random>``; removed
    by :meth:`close`, or when the last object holding it is garbage-collected, or at exit. Folders
    left by a process that died (no such pid) are removed when the next one is created."""

    def __init__(self, parent: str | os.PathLike | None = None):
        if parent is None:
            from core.encoders import rosetta_cache_dir

            parent = rosetta_cache_dir() / "uploads"
        parent = Path(parent)
        remove_orphan_stagings(parent)
        self.path = parent / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path.mkdir(parents=True)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def close(self) -> None:
        self._finalizer()


def remove_orphan_stagings(parent: str | os.PathLike) -> list[str]:
    """Remove staging folders under ``parent`` whose process is gone (and the unnamed ones older
    versions left); returns their names."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        pid_text = entry.name.split("-", 1)[0]
        if pid_text.isdigit() and "-" in entry.name:
            try:
                os.kill(int(pid_text), 0)
                continue  # alive (or not ours to signal): keep
            except ProcessLookupError:
                pass
            except (PermissionError, OverflowError, ValueError):
                continue
        else:  # an older version's folder: removed once nobody can still be using it
            try:
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < 3600:
                    continue
            except OSError:
                continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return removed


# ------------------------------------------------------------------------------- image checking

@dataclass
class ImageCheck:
    ok: bool
    key: bytes | None = None
    kind: str = ""
    message: str = ""


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                data: bytes | None = None) -> ImageCheck:
    """Read a file once: SHA-256 of its bytes, and whether PIL decodes every pixel within the pixel
    limit. JPEGs are decoded at 1/8 DCT scale (``draft``): every byte of the stream is still
    entropy-decoded, so truncation is caught, at a fraction of the time and memory."""
    from PIL import Image, UnidentifiedImageError

    name = os.fspath(path)
    if data is None:
        try:
            size = os.path.getsize(name)
            if size > MAX_IMAGE_FILE_BYTES:
                return ImageCheck(False, None, "too_large",
                                  f"{size / 1e6:.1f} MB is over the {MAX_IMAGE_FILE_BYTES / 1e6:.0f} MB "
                                  "limit per image file (ROSETTA_MAX_IMAGE_BYTES)")
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return ImageCheck(False, None, "missing_image", "file not found")
        except OSError as error:
            return ImageCheck(False, None, "missing_image", f"cannot read: {error.strerror or 'error'}")
    key = hashlib.sha256(data).digest()
    if not data:
        return ImageCheck(False, key, "corrupt_image", "corrupt image (empty file)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return ImageCheck(False, key, "too_many_pixels",
                                  f"{width}x{height} = {width * height:,} pixels is over the limit "
                                  f"of {max_pixels:,} (ROSETTA_MAX_PIXELS; possible decompression bomb)")
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except UnidentifiedImageError:
        return ImageCheck(False, key, "not_image", "not an image file PIL can read")
    except Image.DecompressionBombError:
        return ImageCheck(False, key, "too_many_pixels",
                          f"over the limit of {max_pixels:,} pixels (possible decompression bomb)")
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, zlib.error):
        return ImageCheck(False, key, "corrupt_image", "corrupt image (truncated or damaged data)")
    return ImageCheck(True, key)


class _ScanMemo:
    """Persisted results of :func:`check_image` per file (path, size, mtime), so re-opening a
    dataset costs a ``stat`` per file instead of a read + decode. Stored in the cache dir."""

    VERSION = 2  # 2: every image fully decoded

    def __init__(self, folder: Path):
        from core.encoders import rosetta_cache_dir

        self.folder = str(Path(folder).resolve())
        digest = hashlib.sha256(self.folder.encode()).hexdigest()[:16]
        self.path = rosetta_cache_dir() / "scans" / f"{digest}.json"
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if data.get("folder") == self.folder and data.get("version") == self.VERSION:
                self.entries = data["entries"]
        except (OSError, ValueError, KeyError, AttributeError, RecursionError):
            pass

    def check(self, path: str, max_pixels: int) -> ImageCheck:
        try:
            st = os.stat(path)
        except OSError:
            return check_image(path, max_pixels)
        entry = self.entries.get(path)
        if isinstance(entry, list) and len(entry) == 7 and entry[0] == st.st_size and \
                entry[1] == st.st_mtime_ns and entry[2] == max_pixels:
            return ImageCheck(entry[3], bytes.fromhex(entry[6]) if entry[6] else None, entry[4], entry[5])
        result = check_image(path, max_pixels)
        self.entries[path] = [st.st_size, st.st_mtime_ns, max_pixels, result.ok, result.kind,
                              result.message, result.key.hex() if result.key else ""]
        self.dirty = True
        return result

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": self.VERSION, "folder": self.folder,
                                       "entries": self.entries}))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass  # the memo is an optimisation only


# ------------------------------------------------------------------------------------ CSV / text

def _encoding(path: Path, report: ValidationReport) -> str | None:
    """The text encoding of a file from its byte-order mark (UTF-8 without one); ``None`` (reported,
    fatal) for NUL bytes without a UTF-16/32 mark, which no UTF-8 text has."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                      (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            if name != "utf-8-sig":
                report.add("encoding", path.name, f"decoded as {name.upper()} (it starts with a "
                           f"{name.upper()} byte-order mark)", WARNING)
            return name
    if b"\0" in head:
        report.add("encoding", path.name, "the file contains NUL bytes: it is binary, or UTF-16 without "
                   "a byte-order mark; save it as UTF-8")
        report.fatal = True
        return None
    return "utf-8"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


class _Lines:
    """Physical lines of a text file for ``csv.reader``, numbered, each at most ``limit`` characters
    (the rest of a longer line is read past, never held, and its number kept in ``cut``); lines can
    be pushed back to be read again."""

    def __init__(self, f, limit: int):
        self.f, self.limit = f, limit
        self.number = 0  # number of the last line handed out
        self.taken: list[tuple[int, str]] = []  # lines handed out for the current record
        self.pending: list[tuple[int, str]] = []  # pushed back, last first
        self.cut: set[int] = set()

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        if self.pending:
            number, line = self.pending.pop()
        else:
            line = self.f.readline(self.limit)
            if not line:
                raise StopIteration
            number = self.number + 1
            if len(line) >= self.limit and not line.endswith(("\n", "\r")):
                self.cut.add(number)
                while (rest := self.f.readline(self.limit)) and not rest.endswith(("\n", "\r")):
                    pass
                line += "\n"
        self.number = number
        self.taken.append((number, line))
        return line

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        if lines:
            self.pending.extend(reversed(lines))
            self.number = lines[0][0] - 1


def _csv_records(f, report: ValidationReport, source: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` per CSV record, one physical line each. A record that runs over a
    line break (an unterminated quote), an over-long line, or a malformed line is reported with its
    line number and skipped; reading resumes on the next line."""
    lines = _Lines(f, MAX_CAPTION_BYTES + _MAX_LINE_EXTRA)
    reader = csv.reader(lines)
    while True:
        lines.taken.clear()
        try:
            row = next(reader)
            error = None
        except StopIteration:
            return
        except csv.Error as exc:
            row, error = None, exc
        taken = list(lines.taken)
        if not taken:
            return
        first = taken[0][0]
        item = f"{source}:{first}"
        if len(taken) > 1:
            report.add("bad_quote", item, f"line {first}: a quote opened on this line is not closed on "
                       "it (a field cannot span lines); row skipped")
            lines.push_back(taken[1:])
        elif first in lines.cut:
            report.add("too_long", item, f"line {first} is over {lines.limit:,} characters "
                       "(ROSETTA_MAX_CAPTION_BYTES); row skipped")
        elif error is not None:
            report.add("bad_csv", item, f"line {first} is not valid CSV ({error}); row skipped")
        else:
            yield first, row


#: first characters that make a spreadsheet read a cell as a formula ("CSV injection", OWASP)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """``text`` for a CSV meant for spreadsheets: a leading ``'`` when it would start a formula (or
    already starts with ``'`` before one), so the spreadsheet shows it as text and never evaluates
    it; :func:`from_spreadsheet_cell` undoes it.

    >>> [spreadsheet_cell(t) for t in ("=SUM(A1)", "'=SUM(A1)", "a dog", "'tis")]
    ["'=SUM(A1)", "''=SUM(A1)", 'a dog', "'tis"]
    """
    return "'" + text if text.lstrip("'").startswith(FORMULA_START) else text


def from_spreadsheet_cell(text: str) -> str:
    """The text :func:`spreadsheet_cell` guarded (one ``'`` dropped), so that an exported pair list
    reads back exactly; any other text unchanged.

    >>> all(from_spreadsheet_cell(spreadsheet_cell(t)) == t for t in ("=1", "'=1", "''+1", "'tis", "-"))
    True
    """
    return text[1:] if text.startswith("'") and text.lstrip("'").startswith(FORMULA_START) else text


def _caption_rows(f, report: ValidationReport, source: str) -> Iterator[tuple[str, str, str]]:
    """Rows ``(item label, image, caption)`` of an ``image,caption`` CSV, streamed; problems reported.
    Stops after :data:`MAX_ROWS` rows (reported)."""
    records = _csv_records(f, report, source)
    header = next(records, None)
    if header is None:
        report.add("missing_column", source, "the CSV is empty; expected a header row 'image,caption'")
        report.fatal = True
        return
    names = [h.strip().lower() for h in header[1]]
    missing = [c for c in ("image", "caption") if c not in names]
    if missing:
        report.add("missing_column", source,
                   f"missing column(s) {', '.join(missing)}: the first line must be the header "
                   "'image,caption'")
        report.fatal = True
        return
    i_img, i_cap = names.index("image"), names.index("caption")
    n_rows = 0
    for line, row in records:
        label = f"{source}:{line}"
        if not row or all(not c.strip() for c in row):
            continue
        if n_rows >= MAX_ROWS:
            report.add("too_large", source, f"more than {MAX_ROWS:,} rows (ROSETTA_MAX_ROWS): line "
                       f"{line} and after were not read")
            return
        n_rows += 1
        if len(row) <= max(i_img, i_cap):
            report.add("missing_column", label, "row has too few columns; skipped")
            continue
        image, caption = (from_spreadsheet_cell(row[i].strip()).strip() for i in (i_img, i_cap))
        if _has_surrogates(image) or _has_surrogates(caption):
            report.add("non_utf8", label, "text is not valid UTF-8; row skipped")
            continue
        if not image:
            report.add("missing_image", label, "no image named; row skipped")
            continue
        if not _caption_ok(caption, label, report, "row skipped"):
            continue
        yield label, image, caption


def _caption_ok(caption: str, label: str, report: "ValidationReport", skipped: str) -> bool:
    """A caption is non-empty and at most :data:`MAX_CAPTION_BYTES`; otherwise its row is reported
    (``skipped``: how the message ends) and left out."""
    if not caption:
        report.add("empty_caption", label, f"empty caption; {skipped}")
        return False
    size = len(caption.encode("utf-8"))
    if size > MAX_CAPTION_BYTES:
        report.add("too_long", label, f"caption of {size:,} bytes is over the limit of "
                   f"{MAX_CAPTION_BYTES:,} (ROSETTA_MAX_CAPTION_BYTES); {skipped}")
        return False
    return True


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":"))


def _staged(root: str) -> bool:
    """Whether ``root`` is inside the staging area (its scans are not memoised: it goes away)."""
    from core.encoders import rosetta_cache_dir

    uploads = (rosetta_cache_dir() / "uploads").resolve()
    return uploads in Path(root).resolve().parents


def _build_pairs(rows: Iterable[tuple[str, str, str]], resolve, report: ValidationReport,
                 root: str, max_pixels: int, drop_duplicates: bool = False) -> PairSet:
    """rows: (item label, image name, caption), consumed as they come. ``resolve(name) -> Path | None``."""
    memo = _ScanMemo(Path(root)) if root and Path(root).is_dir() and not _staged(root) else None
    images: list[str] = []
    names: list[str] = []
    keys: list[bytes] = []
    index_of: dict[str, int] = {}
    bad: set[str] = set()
    first_of_key: dict[bytes, str] = {}
    captions: list[str] = []
    pair_image: list[int] = []
    pair_ids: list[str] = []
    first_row: dict[tuple[str, str], str] = {}
    per_image: Counter = Counter()
    for label, name, caption in rows:
        if name in bad:
            continue
        if name not in index_of:
            if not _safe_relative(name):
                report.add("unsafe_path", name, "image name is an absolute path or contains '..'; "
                           "rows naming it skipped")
                bad.add(name)
                continue
            path = resolve(name)
            if path is None:
                report.add("missing_image", name, f"named at {label} but not found; rows naming it skipped")
                bad.add(name)
                continue
            path = str(path)
            check = memo.check(path, max_pixels) if memo else check_image(path, max_pixels)
            if not check.ok:
                report.add(check.kind, name, check.message + "; rows naming it skipped")
                bad.add(name)
                continue
            if check.key in first_of_key:
                report.add("duplicate_image", name,
                           f"same bytes as {first_of_key[check.key]} (kept both)", WARNING)
            else:
                first_of_key[check.key] = name
            index_of[name] = len(images)
            images.append(path)
            names.append(name)
            keys.append(check.key)
        if (name, caption) in first_row:
            report.add("duplicate_pair", label, f"same image and caption as {first_row[name, caption]}" +
                       ("; dropped" if drop_duplicates else "; kept"), WARNING)
            if drop_duplicates:
                continue
        else:
            first_row[name, caption] = label
        captions.append(caption)
        pair_image.append(index_of[name])
        pair_ids.append(f"{name}#{per_image[name]}")
        per_image[name] += 1
    report.counts.update({"pairs": len(captions), "images": len(images)})
    if memo is not None:
        memo.save()
    if not captions and not report.fatal:
        report.add("no_pairs", root or report.source, "no valid image–caption pairs were found")
        report.fatal = True
    return PairSet(images, names, keys, captions, np.array(pair_image, dtype=np.int64), pair_ids,
                   report, root)


def _resolver(*roots: Path):
    roots = tuple(Path(os.path.abspath(r)) for r in roots if r is not None)

    def resolve(name: str) -> Path | None:
        for r in roots:
            candidate = os.path.join(r, name)
            try:
                if os.path.isfile(candidate):
                    return Path(candidate)
            except (OSError, ValueError):  # e.g. a name over the file-system limit, or with NUL
                return None
        return None

    return resolve


def _nothing(report: ValidationReport, root: str = "") -> PairSet:
    """An empty pair set carrying ``report`` (fatal)."""
    return _build_pairs([], _resolver(), report, root, DEFAULT_MAX_PIXELS)


# --------------------------------------------------------------------------------------- loaders

def load_pairs_csv(csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSet:
    """Pairs from an ``image,caption`` CSV, streamed row by row (UTF-8, or UTF-16/32 with a
    byte-order mark); images resolved against ``image_root`` (default: the CSV's folder, then its
    ``images/`` subfolder). Rows with an unterminated quote, a caption over
    :data:`MAX_CAPTION_BYTES` or bad text are skipped one by one (reported with their line)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path} is not a file; expected a CSV with header 'image,caption'")
    report = ValidationReport(source=str(csv_path))
    roots = [Path(image_root)] if image_root else [csv_path.parent, csv_path.parent / "images"]
    try:
        encoding = _encoding(csv_path, report)
        if encoding is None:
            return _nothing(report, str(csv_path.parent))
        errors = "surrogateescape" if encoding.startswith("utf-8") else "replace"
        with open(csv_path, encoding=encoding, errors=errors, newline="") as f:
            return _build_pairs(_caption_rows(f, report, csv_path.name), _resolver(*roots), report,
                                str(csv_path.parent), max_pixels)
    except OSError as error:
        report.add("missing_file", csv_path.name, f"cannot read: {error.strerror or 'error'}")
        report.fatal = True
        return _nothing(report, str(csv_path.parent))


def load_pairs_folder(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSet:
    """A folder holding ``captions.csv`` (or a single ``*.csv``) and the images (``images/`` or beside)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    csv_path = folder / "captions.csv"
    if not csv_path.is_file():
        found = sorted(folder.glob("*.csv"))
        jsons = sorted(folder.glob("*.json"))
        if len(found) == 1:
            csv_path = found[0]
        elif not found and len(jsons) == 1:
            return load_coco(jsons[0], max_pixels=max_pixels)
        else:
            report = ValidationReport(source=str(folder))
            report.add("missing_file", folder.name,
                       "no captions.csv here (expected 'image,caption' rows with images beside it or "
                       "in images/)" if not found else
                       f"several CSV files ({', '.join(p.name for p in found)}); name one captions.csv")
            report.fatal = True
            return _nothing(report, str(folder))
    return load_pairs_csv(csv_path, None, max_pixels)


def _is_key(value: Any) -> bool:
    """A COCO id: a number or a string (never a list, dict, bool or null)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _coco_rows(data: Any, report: ValidationReport, source: str) -> Iterator[tuple[str, str, str]]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        missing = [k for k in ("images", "annotations")
                   if not isinstance(data, dict) or not isinstance(data.get(k), list)]
        report.add("missing_column", source,
                   f"missing list(s) {', '.join(missing)}; expected COCO captions format")
        report.fatal = True
        return
    file_of: dict[Any, str] = {}
    for n, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            report.add("missing_column", f"images[{n}]", "needs 'id' and 'file_name'; skipped")
        elif not _is_key(entry["id"]) or not isinstance(entry["file_name"], str):
            report.add("bad_value", f"images[{n}]", "'id' must be a number or text and 'file_name' "
                       "text; skipped")
        else:
            file_of[entry["id"]] = entry["file_name"]
    for n, ann in enumerate(data["annotations"]):
        label = f"annotations[{n}]"
        if n >= MAX_ROWS:
            report.add("too_large", source, f"more than {MAX_ROWS:,} annotations (ROSETTA_MAX_ROWS): "
                       f"{label} and after were not read")
            return
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            report.add("missing_column", label, "needs 'image_id' and 'caption'; skipped")
            continue
        if not _is_key(ann["image_id"]):
            report.add("bad_value", label, "'image_id' must be a number or text; skipped")
            continue
        if not isinstance(ann["caption"], str):
            kind = "null" if ann["caption"] is None else type(ann["caption"]).__name__
            report.add("bad_value", label, f"the caption is a {kind}, not text; skipped")
            continue
        if ann["image_id"] not in file_of:
            report.add("missing_image", label, "its image_id is not in 'images'; skipped")
            continue
        caption = ann["caption"].strip()
        if _has_surrogates(caption):
            report.add("non_utf8", label, "caption is not valid UTF-8; skipped")
            continue
        if not _caption_ok(caption, label, report, "skipped"):
            continue
        yield label, file_of[ann["image_id"]], caption


def load_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSet:
    """COCO captions JSON (``images: [{id, file_name}]``, ``annotations: [{image_id, caption}]``),
    at most :data:`MAX_JSON_BYTES`; entries of the wrong type are skipped one by one."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise ValueError(f"{json_path} is not a file")
    report = ValidationReport(source=str(json_path))
    root = str(json_path.parent)
    roots: list[Path] = [Path(image_root)] if image_root else \
        [json_path.parent, json_path.parent / "images"]
    try:
        size = json_path.stat().st_size
        if size > MAX_JSON_BYTES:
            report.add("too_large", json_path.name, f"{size / 1e6:,.0f} MB is over the limit of "
                       f"{MAX_JSON_BYTES / 1e6:,.0f} MB for a JSON file (ROSETTA_MAX_JSON_BYTES)")
            report.fatal = True
            return _nothing(report, root)
        encoding = _encoding(json_path, report)
        if encoding is None:
            return _nothing(report, root)
        text = json_path.read_bytes().decode(encoding, "surrogateescape" if encoding.startswith("utf-8")
                                             else "replace")
    except OSError as error:
        report.add("missing_file", json_path.name, f"cannot read: {error.strerror or 'error'}")
        report.fatal = True
        return _nothing(report, root)
    if _has_surrogates(text):
        report.add("non_utf8", json_path.name, "the JSON is not valid UTF-8; bad characters "
                   "make their captions skipped")
    try:
        data = json.loads(text)
    except RecursionError:
        report.add("bad_json", json_path.name, "not usable JSON: nested too deeply")
        report.fatal = True
        return _nothing(report, root)
    except ValueError as error:
        where = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) \
            else ""
        report.add("bad_json", json_path.name, f"not valid JSON{where}")
        report.fatal = True
        return _nothing(report, root)
    del text
    return _build_pairs(_coco_rows(data, report, json_path.name), _resolver(*roots), report, root,
                        max_pixels)


class _Oversize(Exception):
    """An entry inflates past its declared size or past the extraction limit."""


def safe_extract_zip(source: str | os.PathLike | bytes, dest: str | os.PathLike,
                     report: ValidationReport) -> Path:
    """Extract a zip's safe entries into ``dest``. Checked before anything is written: the entry
    count (:data:`MAX_ZIP_ENTRIES`), the declared total (:data:`MAX_ZIP_BYTES`, and the free disk
    space). Absolute paths, ``..``, links, encrypted entries, names over 255 bytes, entries that
    inflate more than :data:`MAX_ZIP_RATIO` times, clashing names and damaged entries (bad CRC,
    sizes that lie) are skipped one by one (listed in ``report``); a lying entry cannot write past
    its declared size or the limit."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    label = "<upload>" if isinstance(source, (bytes, bytearray)) else Path(source).name
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                                  else source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        report.add("bad_zip", label, "not a readable zip archive")
        report.fatal = True
        return dest
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            report.add("too_large", label, f"{len(infos):,} entries is over the limit of "
                       f"{MAX_ZIP_ENTRIES:,} (ROSETTA_MAX_ZIP_ENTRIES); nothing extracted")
            report.fatal = True
            return dest
        total = sum(i.file_size for i in infos if not i.is_dir())
        if total > MAX_ZIP_BYTES:
            report.add("too_large", label, f"{total / 1e9:.2f} GB uncompressed is over the limit of "
                       f"{MAX_ZIP_BYTES / 1e9:.2f} GB (ROSETTA_MAX_ZIP_BYTES); nothing extracted")
            report.fatal = True
            return dest
        free = shutil.disk_usage(dest).free
        if total > free:
            report.add("too_large", label, f"{total / 1e9:.2f} GB uncompressed but only "
                       f"{free / 1e9:.2f} GB free on disk; nothing extracted")
            report.fatal = True
            return dest
        root = dest.resolve()
        written_total = 0
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                report.add("link_entry", name, "symbolic link inside the zip; rejected")
                continue
            if not _safe_relative(name):
                report.add("unsafe_path", name, "absolute path or '..' in the zip entry; rejected")
                continue
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if any(p.startswith("__MACOSX") for p in parts) or parts and parts[-1].startswith("._"):
                continue
            if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or "\0" in name:
                report.add("bad_entry", name[:120], "a name in this path is over 255 bytes; skipped")
                continue
            if info.flag_bits & 0x1:
                report.add("encrypted_entry", name, "encrypted (password-protected) entry; skipped")
                continue
            if info.file_size > (1 << 20) and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
                report.add("too_large", name, f"inflates {info.file_size / max(info.compress_size, 1):,.0f}"
                           f" times, over the limit of {MAX_ZIP_RATIO} (ROSETTA_MAX_ZIP_RATIO); skipped")
                continue
            target = (root / Path(*parts)).resolve() if parts else root
            if root != target and root not in target.parents:
                report.add("unsafe_path", name, "entry would land outside the extraction folder; rejected")
                continue
            created = False
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "xb") as out:
                    created = True
                    written = 0
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        written_total += len(chunk)
                        if written > info.file_size or written_total > MAX_ZIP_BYTES:
                            raise _Oversize
                        out.write(chunk)
            except _Oversize:
                report.add("too_large", name, "holds more data than its header declares (or the "
                           "extraction limit is reached); skipped")
            except (FileExistsError, IsADirectoryError, NotADirectoryError):
                report.add("name_clash", name, "clashes with a file or folder of the same name in the "
                           "zip; skipped")
                continue
            except (zipfile.BadZipFile, EOFError, zlib.error):
                report.add("bad_entry", name, "damaged entry (bad CRC, lying sizes or truncated "
                           "data); skipped")
            except NotImplementedError:
                report.add("bad_entry", name, "compressed with a method that cannot be read; skipped")
            except RuntimeError:
                report.add("encrypted_entry", name, "encrypted (password-protected) entry; skipped")
            except OSError as error:
                report.add("bad_entry", name, f"cannot be written here ({error.strerror or 'error'}); "
                           "skipped")
            else:
                continue
            if created:
                target.unlink(missing_ok=True)
    return dest


def load_pairs_zip(source: str | os.PathLike | bytes, dest: str | os.PathLike | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSet:
    """A zip (path or bytes) of images + ``captions.csv`` (or one CSV / COCO JSON), extracted safely
    into ``dest`` (default: a :class:`Staging` folder, removed with the returned pair set)."""
    if isinstance(source, (bytes, bytearray)):
        label = "<uploaded zip>"
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        label = str(path)
    staging = None
    if dest is None:
        staging = Staging()
        dest = staging.path
    report = ValidationReport(source=label)
    folder = safe_extract_zip(source, dest, report)
    pairs = None
    if not report.fatal:
        # the CSV / JSON may sit at the top or in a single top-level folder
        candidates = [folder] + [p for p in sorted(folder.iterdir()) if p.is_dir()]
        for candidate in candidates:
            csvs = sorted(p for p in candidate.glob("*.csv") if p.is_file())
            jsons = sorted(p for p in candidate.glob("*.json") if p.is_file())
            if (candidate / "captions.csv").is_file() or len(csvs) == 1:
                csv_path = candidate / "captions.csv" if (candidate / "captions.csv").is_file() else csvs[0]
                pairs = load_pairs_csv(csv_path, None, max_pixels)
            elif not csvs and len(jsons) == 1:
                pairs = load_coco(jsons[0], None, max_pixels)
            else:
                continue
            report.merge(pairs.report)
            report.counts = pairs.report.counts
            pairs.report = report
            break
        else:
            report.add("missing_file", label, "no captions.csv (image,caption) or COCO JSON inside the zip")
            report.fatal = True
    if pairs is None:
        pairs = _nothing(report, str(folder))
    pairs.staging = staging
    return pairs


def _plain_name(name: str) -> str | None:
    """The base name of an uploaded file, or None when it is not a plain name."""
    base = os.path.basename(name.replace("\\", "/"))
    if not base or base in (".", "..") or base.startswith(".") or "\0" in base:
        return None
    return base


def stage_uploads(files: Sequence[tuple[str, bytes]], max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSet:
    """Uploaded ``(file name, bytes)``: one zip (:func:`load_pairs_zip`), or images and a CSV
    (``image,caption``) written into a :class:`Staging` folder that lives as long as the returned
    pair set. Never raises: everything skipped or refused is in its report."""
    report = ValidationReport(source="<upload>")
    zips = [f for f in files if f[0].lower().endswith(".zip")]
    if zips:
        if len(files) > 1:
            report.add("ignored_file", ", ".join(n for n, _ in files if n != zips[0][0])[:200],
                       f"upload one zip on its own; only {zips[0][0]} was read", WARNING)
        pairs = load_pairs_zip(zips[0][1], max_pixels=max_pixels)
        report.merge(pairs.report)
        report.counts = pairs.report.counts
        pairs.report = report
        return pairs
    csvs = [n for n, _ in files if n.lower().endswith(".csv")]
    if not csvs:
        report.add("missing_file", "<upload>", "no CSV: add a CSV with columns image,caption (one row "
                   "per caption) next to the photos, or upload a zip holding both")
        report.fatal = True
        return _nothing(report)
    total = sum(len(payload) for _, payload in files)
    if total > MAX_ZIP_BYTES:
        report.add("too_large", "<upload>", f"{total / 1e9:.2f} GB uploaded is over the limit of "
                   f"{MAX_ZIP_BYTES / 1e9:.2f} GB (ROSETTA_MAX_ZIP_BYTES)")
        report.fatal = True
        return _nothing(report)
    staging = Staging()
    for name, payload in files:
        base = _plain_name(name)
        if base is None:
            report.add("unsafe_path", name, "not a plain file name; skipped")
            continue
        if len(base.encode("utf-8", "surrogateescape")) > 255:
            report.add("bad_entry", name[:120], "file name over 255 bytes; skipped")
            continue
        try:
            with open(staging.path / base, "xb") as out:
                out.write(payload)
        except FileExistsError:
            report.add("name_clash", name, "another uploaded file has the same name; the first was kept")
        except OSError as error:
            report.add("bad_entry", name, f"cannot be written here ({error.strerror or 'error'}); skipped")
    csv_name = _plain_name(csvs[0])
    if len(csvs) > 1:
        report.add("ignored_file", ", ".join(csvs[1:])[:200], f"several CSV files: used {csv_name}",
                   WARNING)
    if csv_name is None or not (staging.path / csv_name).is_file():
        report.add("missing_file", csvs[0], "the CSV could not be staged")
        report.fatal = True
        pairs = _nothing(report)
    else:
        pairs = load_pairs_csv(staging.path / csv_name, staging.path, max_pixels)
        report.merge(pairs.report)
        report.counts = pairs.report.counts
        pairs.report = report
    pairs.staging = staging
    return pairs


def load_pairs(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSet:
    """Pairs from a folder, CSV, COCO JSON or zip (path or bytes); see the module docstring."""
    if isinstance(source, (bytes, bytearray)):
        return load_pairs_zip(source, max_pixels=max_pixels)
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist; give a folder with captions.csv, a CSV, a COCO "
                         "JSON, or a zip")
    if path.is_dir():
        return load_pairs_folder(path, max_pixels)
    suffix = path.suffix.lower()
    if suffix == ".zip" or zipfile.is_zipfile(path):
        return load_pairs_zip(path, max_pixels=max_pixels)
    if suffix == ".json":
        return load_coco(path, max_pixels=max_pixels)
    return load_pairs_csv(path, max_pixels=max_pixels)


def allowed_roots() -> list[Path]:
    """Folders under which the app reads a folder a user names: the data location
    (:func:`data_dir`) and those in ``ROSETTA_ALLOWED_ROOTS`` (``os.pathsep``-separated)."""
    roots = []
    found = data_dir()
    if found is not None:
        roots.append(Path(os.path.realpath(found)))
    for part in os.environ.get("ROSETTA_ALLOWED_ROOTS", "").split(os.pathsep):
        if part.strip():
            roots.append(Path(os.path.realpath(Path(part.strip()).expanduser())))
    return roots


def allowed_folder(path: str, roots: Sequence[str | os.PathLike] | None = None) -> Path:
    """``path`` with links resolved, when it is a folder inside one of ``roots`` (default
    :func:`allowed_roots`); otherwise a one-sentence ``ValueError``. Nothing outside the roots is
    opened or even tested for existence."""
    roots = allowed_roots() if roots is None else [Path(os.path.realpath(r)) for r in roots]
    text = str(path).strip()
    if not text or "\0" in text:
        raise ValueError("Give the path of a folder.")
    target = Path(text).expanduser()
    if not target.is_absolute():
        raise ValueError("Give the folder's full path (starting with /).")
    resolved = Path(os.path.realpath(target))
    if not any(resolved == r or r in resolved.parents for r in roots):
        where = ", ".join(str(r) for r in roots) or "no folder yet"
        raise ValueError(f"Only folders inside the allowed locations ({where}) can be read; "
                         "ROSETTA_ALLOWED_ROOTS adds others.")
    if not resolved.is_dir():
        raise ValueError("That path is not a folder: give the folder that holds captions.csv and "
                         "the photos.")
    return resolved


def load_labeled(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                 limit_per_class: int | None = None) -> LabeledSet:
    """Class-per-folder images: ``<folder>/<class name>/<image>``; classes sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected one sub-folder of images per class")
    report = ValidationReport(source=str(folder))
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            report.add("ignored_file", p.name, "files at the top level are ignored; put images in "
                       "one folder per class", WARNING)
    paths: list[str] = []
    labels: list[int] = []
    keys: list[bytes] = []
    names: list[str] = []
    first_of_key: dict[bytes, str] = {}
    memo = _ScanMemo(folder)
    root = os.path.abspath(folder)
    for class_dir in class_dirs:
        label = len(names)
        n_ok = 0
        class_root = os.path.join(root, class_dir.name)
        for dirpath, dirnames, filenames in os.walk(class_root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                full = os.path.join(dirpath, fname)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if os.path.islink(full):
                    report.add("link_entry", rel, "symbolic link; skipped")
                    continue
                if limit_per_class is not None and n_ok >= limit_per_class:
                    break
                check = memo.check(full, max_pixels)
                if not check.ok:
                    report.add(check.kind, rel, check.message + "; skipped")
                    continue
                if check.key in first_of_key:
                    report.add("duplicate_image", rel, f"same bytes as {first_of_key[check.key]} "
                               "(kept both)", WARNING)
                else:
                    first_of_key[check.key] = rel
                paths.append(full)
                labels.append(label)
                keys.append(check.key)
                n_ok += 1
        if n_ok == 0:
            report.add("empty_class", class_dir.name, "no readable images; class dropped", WARNING)
            continue
        names.append(class_dir.name)
    memo.save()
    report.counts.update({"images": len(paths), "classes": len(names)})
    if not paths:
        report.add("no_images", str(folder), "no readable images in class folders")
        report.fatal = True
    return LabeledSet(paths, np.array(labels, dtype=np.int64), names, keys, report, str(folder))


# ------------------------------------------------------------------------------------- demo data

def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def data_dir(required: bool = False) -> Path | None:
    """Demo/evaluation data folder: ``ROSETTA_DATA``, else ``../shared/data`` next to the project
    (or ``shared/data`` inside it). ``required=True`` raises a ``ValueError`` explaining the layout."""
    env = os.environ.get("ROSETTA_DATA")
    candidates = [Path(env).expanduser()] if env else \
        [project_root().parent / "shared" / "data", project_root() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    if required:
        where = candidates[0]
        raise ValueError(f"no demo data at {where}.\n{EXPECTED_LAYOUT}")
    return None


def demo_sources(required: bool = False) -> dict[str, Path | None]:
    """Paths of the demo datasets (``flickr8k`` pairs folder, ``cifar10_test``, ``cifar10_train``)."""
    root = data_dir(required=required)
    if root is None:
        return {"root": None, "flickr8k": None, "cifar10_test": None, "cifar10_train": None}
    out = {"root": root,
           "flickr8k": root / "flickr8k",
           "cifar10_test": root / "cifar10" / "test",
           "cifar10_train": root / "cifar10" / "train"}
    for k, v in list(out.items()):
        if k != "root" and not v.exists():
            out[k] = None
    if required and (out["flickr8k"] is None or out["cifar10_test"] is None):
        raise ValueError(f"the demo data at {root} is incomplete.\n{EXPECTED_LAYOUT}")
    return out


def demo_data_root() -> Path:
    """The demo data folder; a ``ValueError`` explaining the expected layout when it is absent."""
    found = data_dir(required=True)
    assert found is not None
    return found

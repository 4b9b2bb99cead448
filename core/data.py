"""Datasets: image–caption pair sets and labeled image sets, with a validation report.

Loaders (each returns a set whose ``.report`` lists every problem; bad items are skipped, the rest
loads; they raise ``ValueError`` only when the source itself cannot be found or opened):

* :func:`load_pairs` — dispatches on the source: a folder with ``captions.csv`` (``image,caption``;
  the Flickr8k layout), a CSV file, a COCO captions JSON, or a zip (path or bytes) holding images and
  a CSV (or a COCO JSON).
* :func:`load_labeled` — class-per-folder image sets (``<root>/<class>/*.jpg``, the CIFAR-10 layout).
* :func:`data_dir` / :func:`demo_sources` — where the demo data lives (``ROSETTA_DATA``, else
  ``../shared/data`` next to the project).

A :class:`PairSet` holds one pair per (image, caption) row: ``captions[P]``, ``pair_image[P]``
(index into the distinct ``images``), stable ``pair_ids[P]``; ``image_keys`` are the SHA-256 digests
of the image bytes (the embedding-cache keys). A :class:`LabeledSet` holds ``paths[n]``,
``labels[n]``, ``class_names`` and ``keys[n]``.

The :class:`ValidationReport` is a list of :class:`Problem` (``kind``, ``item``, ``message``,
``severity``) plus counts; ``report.to_dict()`` / ``report.rows()`` are ready for a table.
Problem kinds: ``missing_file``, ``missing_column``, ``empty_caption``, ``missing_image``,
``not_image``, ``corrupt_image``, ``too_many_pixels``, ``non_utf8``, ``unsafe_path``,
``link_entry``, ``too_large``, ``duplicate_pair``, ``duplicate_image``, ``empty_class``,
``bad_json``, ``ignored_file``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import numpy as np

from core.encoders import DEFAULT_MAX_PIXELS

#: Limits for uploads (zip archives): total uncompressed bytes and number of entries.
MAX_ZIP_BYTES = int(os.environ.get("ROSETTA_MAX_ZIP_BYTES", 2 * 1024**3))
MAX_ZIP_ENTRIES = int(os.environ.get("ROSETTA_MAX_ZIP_ENTRIES", 200_000))
MAX_IMAGE_FILE_BYTES = int(os.environ.get("ROSETTA_MAX_IMAGE_BYTES", 50 * 1024**2))

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
    """What a loader found: the problems and the counts of what loaded."""

    source: str = ""
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    fatal: bool = False  # nothing could be loaded (e.g. missing columns)

    def add(self, kind: str, item: Any, message: str, severity: str = ERROR) -> None:
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
        return dict(Counter(p.kind for p in self.problems))

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

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
        if not self.problems:
            return f"{loaded}; no problems"
        issues = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(self.by_kind().items()))
        return f"{loaded}; {len(self.problems)} problem(s): {issues}"

    def merge(self, other: "ValidationReport") -> None:
        self.problems.extend(other.problems)
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
            pair_ids=[self.pair_ids[i] for i in sel.tolist()], report=self.report, root=self.root)

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


# ------------------------------------------------------------------------------- image checking

@dataclass
class _ImageCheck:
    ok: bool
    key: bytes | None = None
    kind: str = ""
    message: str = ""


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, deep: bool = False,
                data: bytes | None = None) -> _ImageCheck:
    """Read a file once: SHA-256 of its bytes, and whether PIL can read it within the pixel limit.

    ``deep=True`` decodes the pixels (catches truncated files); otherwise the header is parsed and
    ``verify()``-ed, which is fast.
    """
    from PIL import Image, UnidentifiedImageError

    name = os.fspath(path)
    if data is None:
        try:
            size = os.path.getsize(name)
            if size > MAX_IMAGE_FILE_BYTES:
                return _ImageCheck(False, None, "too_large",
                                   f"{size / 1e6:.1f} MB is over the {MAX_IMAGE_FILE_BYTES / 1e6:.0f} MB "
                                   "limit per image file")
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return _ImageCheck(False, None, "missing_image", "file not found")
        except OSError as error:
            return _ImageCheck(False, None, "missing_image", f"cannot read: {error.strerror or error}")
    key = hashlib.sha256(data).digest()
    if not data:
        return _ImageCheck(False, key, "corrupt_image", "empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                return _ImageCheck(False, key, "too_many_pixels",
                                   f"{width}x{height} = {width * height:,} pixels is over the limit "
                                   f"of {max_pixels:,} (possible decompression bomb); rejected")
            if deep:
                image.load()
            else:
                image.verify()
    except UnidentifiedImageError:
        return _ImageCheck(False, key, "not_image", "not an image file PIL can read")
    except Image.DecompressionBombError as error:
        return _ImageCheck(False, key, "too_many_pixels",
                           f"over the limit of {max_pixels:,} pixels (possible decompression bomb); "
                           f"rejected ({error})")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return _ImageCheck(False, key, "corrupt_image", f"corrupt or truncated image ({error})")
    return _ImageCheck(True, key)


class _ScanMemo:
    """Persisted results of :func:`check_image` per file (path, size, mtime), so re-opening a
    dataset costs a ``stat`` per file instead of a read + parse. Stored in the cache dir."""

    def __init__(self, folder: Path):
        from core.encoders import rosetta_cache_dir

        self.folder = str(Path(folder).resolve())
        digest = hashlib.sha256(self.folder.encode()).hexdigest()[:16]
        self.path = rosetta_cache_dir() / "scans" / f"{digest}.json"
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if data.get("folder") == self.folder and data.get("version") == 1:
                self.entries = data["entries"]
        except (OSError, ValueError, KeyError, AttributeError):
            pass

    def check(self, path: str, max_pixels: int, deep: bool) -> _ImageCheck:
        try:
            st = os.stat(path)
        except OSError:
            return check_image(path, max_pixels, deep)
        entry = self.entries.get(path)
        if entry is not None and len(entry) == 8 and entry[0] == st.st_size and \
                entry[1] == st.st_mtime_ns and entry[3] == max_pixels and (entry[2] or not deep):
            return _ImageCheck(entry[4], bytes.fromhex(entry[7]) if entry[7] else None,
                               entry[5], entry[6])
        result = check_image(path, max_pixels, deep)
        self.entries[path] = [st.st_size, st.st_mtime_ns, deep, max_pixels, result.ok, result.kind,
                              result.message, result.key.hex() if result.key else ""]
        self.dirty = True
        return result

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": 1, "folder": self.folder, "entries": self.entries}))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            pass  # the memo is an optimisation only


# ------------------------------------------------------------------------------------ CSV / text

def _read_text(path: Path, report: ValidationReport) -> str | None:
    """Text of a file as UTF-8; undecodable bytes become surrogates, which callers report per row."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        report.add("missing_file", path.name, f"cannot read: {error.strerror or error}")
        report.fatal = True
        return None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _parse_caption_csv(text: str, report: ValidationReport, source: str
                       ) -> list[tuple[int, str, str]]:
    """Rows ``(line number, image, caption)`` of an ``image,caption`` CSV; problems reported."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        report.add("missing_column", source, "the CSV is empty; expected a header row 'image,caption'")
        report.fatal = True
        return []
    except csv.Error as error:
        report.add("bad_csv", source, f"not a readable CSV ({error})")
        report.fatal = True
        return []
    names = [h.strip().lower() for h in header]
    missing = [c for c in ("image", "caption") if c not in names]
    if missing:
        report.add("missing_column", source,
                   f"missing column(s) {', '.join(missing)}; the header is {header!r}, expected "
                   "'image,caption'")
        report.fatal = True
        return []
    i_img, i_cap = names.index("image"), names.index("caption")
    rows: list[tuple[int, str, str]] = []
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(i_img, i_cap):
                report.add("missing_column", f"{source}:{line}", "row has too few columns; skipped")
                continue
            image, caption = row[i_img].strip(), row[i_cap].strip()
            if _has_surrogates(image) or _has_surrogates(caption):
                report.add("non_utf8", f"{source}:{line}", "text is not valid UTF-8; row skipped")
                continue
            if not image:
                report.add("missing_image", f"{source}:{line}", "no image named; row skipped")
                continue
            if not caption:
                report.add("empty_caption", f"{source}:{line}", "empty caption; row skipped")
                continue
            rows.append((line, image, caption))
    except csv.Error as error:
        report.add("bad_csv", source, f"CSV parsing stopped at line {reader.line_num}: {error}")
    return rows


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not (p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":"))


def _build_pairs(rows: Sequence[tuple[str, str, str]], resolve, report: ValidationReport,
                 root: str, max_pixels: int, deep: bool, drop_duplicates: bool = False) -> PairSet:
    """rows: (item label, image name, caption). ``resolve(name) -> Path | None``."""
    memo = _ScanMemo(Path(root)) if root and Path(root).is_dir() else None
    images: list[str] = []
    names: list[str] = []
    keys: list[bytes] = []
    index_of: dict[str, int] = {}
    bad: set[str] = set()
    first_of_key: dict[bytes, str] = {}
    captions: list[str] = []
    pair_image: list[int] = []
    pair_ids: list[str] = []
    seen_pairs: set[tuple[str, str]] = set()
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
            check = memo.check(path, max_pixels, deep) if memo else check_image(path, max_pixels, deep)
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
        if (name, caption) in seen_pairs:
            report.add("duplicate_pair", label, f"repeats an earlier row ({name}, {caption[:40]!r})" +
                       ("; dropped" if drop_duplicates else "; kept"), WARNING)
            if drop_duplicates:
                continue
        seen_pairs.add((name, caption))
        captions.append(caption)
        pair_image.append(index_of[name])
        pair_ids.append(f"{name}#{per_image[name]}")
        per_image[name] += 1
    report.counts.update({"pairs": len(captions), "images": len(images)})
    if memo is not None:
        memo.save()
    if not captions and not report.fatal:
        report.add("no_pairs", root, "no valid image–caption pairs were found")
        report.fatal = True
    return PairSet(images, names, keys, captions, np.array(pair_image, dtype=np.int64), pair_ids,
                   report, root)


def _resolver(*roots: Path):
    roots = tuple(Path(os.path.abspath(r)) for r in roots if r is not None)

    def resolve(name: str) -> Path | None:
        for r in roots:
            candidate = os.path.join(r, name)
            if os.path.isfile(candidate):
                return Path(candidate)
        return None

    return resolve


# --------------------------------------------------------------------------------------- loaders

def load_pairs_csv(csv_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, deep: bool = False) -> PairSet:
    """Pairs from an ``image,caption`` CSV; images resolved against ``image_root`` (default: the CSV's
    folder, then its ``images/`` subfolder)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"{csv_path} is not a file; expected a CSV with header 'image,caption'")
    report = ValidationReport(source=str(csv_path))
    text = _read_text(csv_path, report)
    if text is None:
        return _build_pairs([], _resolver(), report, str(csv_path.parent), max_pixels, deep)
    rows = _parse_caption_csv(text, report, csv_path.name)
    rows3 = [(f"{csv_path.name}:{line}", image, caption) for line, image, caption in rows]
    roots = [Path(image_root)] if image_root else [csv_path.parent, csv_path.parent / "images"]
    return _build_pairs(rows3, _resolver(*roots), report, str(csv_path.parent), max_pixels, deep)


def load_pairs_folder(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                      deep: bool = False) -> PairSet:
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
            return load_coco(jsons[0], max_pixels=max_pixels, deep=deep)
        else:
            report = ValidationReport(source=str(folder))
            report.add("missing_file", folder.name,
                       "no captions.csv here (expected 'image,caption' rows with images beside it or "
                       "in images/)" if not found else
                       f"several CSV files ({', '.join(p.name for p in found)}); name one captions.csv")
            report.fatal = True
            return _build_pairs([], _resolver(), report, str(folder), max_pixels, deep)
    return load_pairs_csv(csv_path, None, max_pixels, deep)


def load_coco(json_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, deep: bool = False) -> PairSet:
    """COCO captions JSON (``images: [{id, file_name}]``, ``annotations: [{image_id, caption}]``)."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise ValueError(f"{json_path} is not a file")
    report = ValidationReport(source=str(json_path))
    text = _read_text(json_path, report)
    rows: list[tuple[str, str, str]] = []
    roots: list[Path] = [Path(image_root)] if image_root else \
        [json_path.parent, json_path.parent / "images"]
    if text is not None:
        if _has_surrogates(text):
            report.add("non_utf8", json_path.name, "the JSON is not valid UTF-8; bad characters "
                       "make their captions skipped")
        try:
            data = json.loads(text)
        except ValueError as error:
            report.add("bad_json", json_path.name, f"not valid JSON ({error})")
            report.fatal = True
            data = None
        if data is not None:
            if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
                    not isinstance(data.get("annotations"), list):
                missing = [k for k in ("images", "annotations")
                           if not isinstance(data, dict) or not isinstance(data.get(k), list)]
                report.add("missing_column", json_path.name,
                           f"missing list(s) {', '.join(missing)}; expected COCO captions format")
                report.fatal = True
            else:
                file_of: dict[Any, str] = {}
                for n, entry in enumerate(data["images"]):
                    if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
                        report.add("missing_column", f"images[{n}]", "needs 'id' and 'file_name'; skipped")
                        continue
                    file_of[entry["id"]] = str(entry["file_name"])
                for n, ann in enumerate(data["annotations"]):
                    label = f"annotations[{n}]"
                    if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                        report.add("missing_column", label, "needs 'image_id' and 'caption'; skipped")
                        continue
                    if ann["image_id"] not in file_of:
                        report.add("missing_image", label,
                                   f"image_id {ann['image_id']!r} is not in 'images'; skipped")
                        continue
                    caption = str(ann["caption"]).strip()
                    if _has_surrogates(caption):
                        report.add("non_utf8", label, "caption is not valid UTF-8; skipped")
                        continue
                    if not caption:
                        report.add("empty_caption", label, "empty caption; skipped")
                        continue
                    rows.append((label, file_of[ann["image_id"]], caption))
    return _build_pairs(rows, _resolver(*roots), report, str(json_path.parent), max_pixels, deep)


def safe_extract_zip(source: str | os.PathLike | bytes, dest: str | os.PathLike,
                     report: ValidationReport) -> Path:
    """Extract a zip's safe entries into ``dest``; absolute paths, ``..``, links, and oversize
    archives are rejected (listed in ``report``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                                  else source)
    except (zipfile.BadZipFile, OSError) as error:
        report.add("bad_zip", str(source)[:80] if not isinstance(source, bytes) else "<upload>",
                   f"not a readable zip archive ({error})")
        report.fatal = True
        return dest
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            report.add("too_large", "<zip>", f"{len(infos):,} entries is over the limit of "
                       f"{MAX_ZIP_ENTRIES:,}")
            report.fatal = True
            return dest
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES:
            report.add("too_large", "<zip>", f"{total / 1e9:.2f} GB uncompressed is over the limit of "
                       f"{MAX_ZIP_BYTES / 1e9:.2f} GB")
            report.fatal = True
            return dest
        root = dest.resolve()
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
            target = (root / Path(*parts)).resolve() if parts else root
            if root != target and root not in target.parents:
                report.add("unsafe_path", name, "entry would land outside the extraction folder; rejected")
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                written = 0
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > info.file_size + 1024:  # lying header
                        break
                    out.write(chunk)
    return dest


def load_pairs_zip(source: str | os.PathLike | bytes, dest: str | os.PathLike | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, deep: bool = True) -> PairSet:
    """A zip (path or bytes) of images + ``captions.csv`` (or one CSV / COCO JSON), extracted safely
    into ``dest`` (default: the cache dir, ``uploads/<sha256 of the zip>``)."""
    if isinstance(source, (bytes, bytearray)):
        digest = hashlib.sha256(source).hexdigest()[:16]
        label = "<uploaded zip>"
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        digest = h.hexdigest()[:16]
        label = str(path)
    if dest is None:
        from core.encoders import rosetta_cache_dir

        dest = rosetta_cache_dir() / "uploads" / digest
    report = ValidationReport(source=label)
    folder = safe_extract_zip(source, dest, report)
    if report.fatal:
        return _build_pairs([], _resolver(), report, str(folder), max_pixels, deep)
    # the CSV / JSON may sit at the top or in a single top-level folder
    candidates = [folder] + [p for p in sorted(folder.iterdir()) if p.is_dir()]
    for candidate in candidates:
        csvs = sorted(candidate.glob("*.csv"))
        jsons = sorted(candidate.glob("*.json"))
        if csvs or jsons:
            if (candidate / "captions.csv").is_file() or len(csvs) == 1:
                csv_path = candidate / "captions.csv" if (candidate / "captions.csv").is_file() else csvs[0]
                pairs = load_pairs_csv(csv_path, None, max_pixels, deep)
            elif not csvs and len(jsons) == 1:
                pairs = load_coco(jsons[0], None, max_pixels, deep)
            else:
                continue
            report.merge(pairs.report)
            report.counts = pairs.report.counts
            pairs.report = report
            return pairs
    report.add("missing_file", label, "no captions.csv (image,caption) or COCO JSON inside the zip")
    report.fatal = True
    return _build_pairs([], _resolver(), report, str(folder), max_pixels, deep)


def load_pairs(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
               deep: bool | None = None) -> PairSet:
    """Pairs from a folder, CSV, COCO JSON or zip (path or bytes); see the module docstring."""
    if isinstance(source, (bytes, bytearray)):
        return load_pairs_zip(source, max_pixels=max_pixels, deep=True if deep is None else deep)
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist; give a folder with captions.csv, a CSV, a COCO "
                         "JSON, or a zip")
    if path.is_dir():
        return load_pairs_folder(path, max_pixels, bool(deep))
    suffix = path.suffix.lower()
    if suffix == ".zip" or zipfile.is_zipfile(path):
        return load_pairs_zip(path, max_pixels=max_pixels, deep=True if deep is None else deep)
    if suffix == ".json":
        return load_coco(path, max_pixels=max_pixels, deep=bool(deep))
    return load_pairs_csv(path, max_pixels=max_pixels, deep=bool(deep))


def load_labeled(folder: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                 deep: bool = False, limit_per_class: int | None = None) -> LabeledSet:
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
                check = memo.check(full, max_pixels, deep)
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

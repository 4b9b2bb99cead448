"""Hostile and careless input to the data loaders (issue #12): every bad input is generated here,
in tmp_path; each gets a one-sentence report entry (no traceback, no file contents quoted) and the
good items beside it still load."""
from __future__ import annotations

import gc
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data as D

ROOT = Path(__file__).resolve().parents[1]
SECRET = "ROSETTA_TEST_SECRET_3141592653"


def _jpeg_bytes(color=(10, 120, 200), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _messages(report) -> str:
    return " ".join(p.message for p in report.problems)


def _stored_zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name, payload in entries:
            z.writestr(name, payload)
    return buf.getvalue()


def _patch_headers(blob: bytes, name: bytes, local: dict[int, bytes], central: dict[int, bytes]) -> bytes:
    """Overwrite fields of ``name``'s local header (offsets from its 'PK\\3\\4') and central
    directory record (from its 'PK\\1\\2')."""
    out = bytearray(blob)
    for sig, fields, name_at in ((b"PK\x03\x04", local, 30), (b"PK\x01\x02", central, 46)):
        at = 0
        while (at := out.find(sig, at)) >= 0:
            if out[at + name_at: at + name_at + len(name)] == name:
                for offset, value in fields.items():
                    out[at + offset: at + offset + len(value)] = value
                break
            at += 1
        else:
            raise AssertionError(f"no header for {name!r}")
    return bytes(out)


def _good_entries(extra_csv: str = "") -> list[tuple[str, bytes]]:
    return [("good.jpg", _jpeg_bytes()),
            ("captions.csv", ("image,caption\ngood.jpg,a good photo\n" + extra_csv).encode())]


def _load_zip(blob: bytes, tmp_path: Path):
    pairs = D.load_pairs_zip(blob, dest=tmp_path / "out")
    assert pairs.captions == ["a good photo"], pairs.report.rows()
    assert SECRET not in _messages(pairs.report)
    return pairs.report


# ----------------------------------------------------------------------------- images

def test_truncated_jpeg_is_reported_by_name_and_skipped(tmp_path):
    whole = _jpeg_bytes(size=(640, 480))
    for i, name in enumerate(["ok.jpg", "cut.jpg"]):
        Image.new("RGB", (640, 480), (i * 90, 40, 200)).save(tmp_path / name, quality=95)
    cut = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(cut[: len(cut) * 2 // 3])  # header intact, data missing
    with Image.open(tmp_path / "cut.jpg") as im:
        im.verify()  # the quick header check passes: only decoding finds the damage
    (tmp_path / "captions.csv").write_text("image,caption\nok.jpg,fine\ncut.jpg,broken\n")
    pairs = D.load_pairs(tmp_path)
    assert pairs.captions == ["fine"] and len(whole) > 0
    [problem] = pairs.report.problems
    assert (problem.kind, problem.item) == ("corrupt_image", "cut.jpg")
    assert "corrupt image" in problem.message
    # the same through the upload path
    staged = D.stage_uploads([("cut.jpg", (tmp_path / "cut.jpg").read_bytes()),
                              ("captions.csv", b"image,caption\ncut.jpg,broken\n")])
    assert staged.report.fatal and staged.report.items("corrupt_image") == ["cut.jpg"]


# ----------------------------------------------------------------------------- file disclosure

def test_header_and_json_errors_never_quote_file_contents(tmp_path):
    (tmp_path / "captions.csv").write_text(f"PATH=/usr/bin,{SECRET}=hunter2\nx,y\n")
    report = D.load_pairs(tmp_path).report
    assert report.fatal and "missing_column" in report.kinds()
    assert SECRET not in _messages(report) and "hunter2" not in _messages(report)
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                "annotations": [{"image_id": SECRET, "caption": "x"}]}))
    assert SECRET not in _messages(D.load_pairs(coco).report)


def test_folder_field_takes_allowed_folders_only(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "set").mkdir(parents=True)
    big = allowed / "big.csv"
    with open(big, "wb") as f:  # a 2 GB (sparse) file: refused without being read
        f.truncate(2 * 1024**3)
    (tmp_path / "outside").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "outside")
    assert D.allowed_folder(str(allowed / "set"), roots=[allowed]) == (allowed / "set").resolve()
    for bad, why in ((big, "not a folder"), ("/proc/self/environ", "allowed locations"),
                     (tmp_path / "outside", "allowed locations"), (allowed / "escape", "allowed locations"),
                     ("relative/path", "full path"), ("", "path of a folder")):
        with pytest.raises(ValueError, match=why) as caught:
            D.allowed_folder(str(bad), roots=[allowed])
        assert SECRET not in str(caught.value)


def test_allowed_roots_are_the_data_location_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSETTA_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("ROSETTA_ALLOWED_ROOTS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert D.allowed_roots() == [(tmp_path / p).resolve() for p in ("data", "a", "b")]


# ----------------------------------------------------------------------------- malformed zips

def test_zip_entry_with_bad_crc(tmp_path):
    payload = _jpeg_bytes((200, 10, 10))
    blob = bytearray(_stored_zip(_good_entries("bad.jpg,bad crc\n") + [("bad.jpg", payload)]))
    at = bytes(blob).rfind(payload)
    blob[at + len(payload) // 2] ^= 0xFF  # the data no longer matches the stored CRC-32
    report = _load_zip(bytes(blob), tmp_path)
    assert report.items("bad_entry") == ["bad.jpg"] and not (tmp_path / "out" / "bad.jpg").exists()


def test_zip_entry_with_lying_sizes(tmp_path):
    blob = _stored_zip(_good_entries("liar.jpg,lies\n") + [("liar.jpg", _jpeg_bytes((0, 200, 0)))])
    small = struct.pack("<I", 100)  # declares 100 bytes uncompressed
    blob = _patch_headers(blob, b"liar.jpg", {22: small}, {24: small})
    report = _load_zip(blob, tmp_path)
    assert "liar.jpg" in report.items("bad_entry") + report.items("too_large")


def test_encrypted_zip_entry(tmp_path):
    blob = _stored_zip(_good_entries("secret.jpg,hidden\n") + [("secret.jpg", _jpeg_bytes())])
    flag = struct.pack("<H", 0x1)
    blob = _patch_headers(blob, b"secret.jpg", {6: flag}, {8: flag})
    report = _load_zip(blob, tmp_path)
    assert report.items("encrypted_entry") == ["secret.jpg"]


def test_zip_file_and_folder_name_clash(tmp_path):
    blob = _stored_zip(_good_entries() + [("clash", b"a file"), ("clash/inner.jpg", _jpeg_bytes())])
    report = _load_zip(blob, tmp_path)
    assert report.items("name_clash") == ["clash/inner.jpg"]


def test_zip_name_over_255_bytes(tmp_path):
    long_name = "é" * 140 + ".jpg"  # 284 bytes in UTF-8
    report = _load_zip(_stored_zip(_good_entries() + [(long_name, _jpeg_bytes())]), tmp_path)
    assert [p.kind for p in report.problems] == ["bad_entry"] and "255 bytes" in report.problems[0].message


def test_zip_limits_are_checked_before_writing(tmp_path, monkeypatch):
    blob = _stored_zip(_good_entries() + [("big.bin", b"\0" * 50_000)])
    monkeypatch.setattr(D, "MAX_ZIP_BYTES", 20_000)
    pairs = D.load_pairs_zip(blob, dest=tmp_path / "out")
    assert pairs.report.fatal and "ROSETTA_MAX_ZIP_BYTES" in _messages(pairs.report)
    assert list((tmp_path / "out").iterdir()) == []  # nothing was written
    monkeypatch.setattr(D, "MAX_ZIP_BYTES", 10**9)
    monkeypatch.setattr(D, "MAX_ZIP_ENTRIES", 2)
    assert "ROSETTA_MAX_ZIP_ENTRIES" in _messages(D.load_pairs_zip(blob, dest=tmp_path / "o2").report)
    monkeypatch.setattr(D, "MAX_ZIP_ENTRIES", 100)
    buf = io.BytesIO()  # a zip bomb: 8 MB of zeros in a few kB
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, payload in _good_entries():
            z.writestr(name, payload)
        z.writestr("bomb.bin", b"\0" * (8 << 20))
    report = _load_zip(buf.getvalue(), tmp_path / "bomb")
    assert report.items("too_large") == ["bomb.bin"] and not (tmp_path / "bomb" / "out" / "bomb.bin").exists()


def test_extraction_folders_removed_when_done_and_orphans_cleaned(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSETTA_CACHE_DIR", str(tmp_path / "cache"))
    uploads = tmp_path / "cache" / "uploads"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = uploads / f"{dead}-crashed"
    orphan.mkdir(parents=True)
    (orphan / "left.jpg").write_bytes(b"x")
    pairs = D.load_pairs_zip(_stored_zip(_good_entries()))
    assert not orphan.exists()  # a crashed run's folder is cleaned when the next one starts
    folder = pairs.staging.path
    assert folder.is_dir() and Path(pairs.images[0]).is_relative_to(folder)
    subset = pairs.subset([0])
    del pairs
    gc.collect()
    assert folder.is_dir()  # still used by the subset
    del subset
    gc.collect()
    assert not folder.exists() and list(uploads.iterdir()) == []


# ----------------------------------------------------------------------------- COCO JSON

def test_coco_with_list_ids_and_wrong_caption_types(tmp_path):
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "a.jpg")
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": [2], "file_name": "b.jpg"}],
            "annotations": [{"image_id": 1, "caption": "real text"},
                            {"image_id": [1], "caption": "list id"},
                            {"image_id": 1, "caption": {"a": 1}}, {"image_id": 1, "caption": None},
                            {"image_id": 1, "caption": ["x"]}, {"image_id": 1, "caption": 5}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco))
    pairs = D.load_pairs(path)
    assert pairs.captions == ["real text"]
    assert pairs.report.by_kind() == {"bad_value": 6}
    assert not any(c in ("{'a': 1}", "None", "['x']", "5") for c in pairs.captions)


def test_coco_nested_100k_deep(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    report = D.load_pairs(path).report
    assert report.fatal and report.kinds() == {"bad_json"} and "nested too deeply" in _messages(report)


# ----------------------------------------------------------------------------- model file

def _model_file(tmp_path: Path, name: str, **change) -> Path:
    meta = {"format": "rosetta-asif", "version": 1, "k": 3, "p": 2.0, "metadata": None}
    arrays = {"image_embeddings": np.eye(6, 4, dtype=np.float32),
              "text_embeddings": np.eye(6, 3, dtype=np.float32), "pair_ids": np.arange(6)}
    drop = change.pop("drop", None)
    for key, value in change.items():
        (meta if key in meta or key in ("temperature",) else arrays)[key] = value
    if drop in meta:
        del meta[drop]
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    if drop in arrays:
        del arrays[drop]
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def test_model_npz_without_k_or_with_wrong_types(tmp_path):
    from core.asif import AsifModel

    good = AsifModel.load(_model_file(tmp_path, "good"))
    assert (good.k, good.p, good.n_anchors) == (3, 2.0, 6)
    bad = {"no_k": {"drop": "k"}, "k_text": {"k": "3"}, "k_list": {"k": [3]}, "k_bool": {"k": True},
           "p_text": {"p": "two"}, "p_null": {"p": None}, "no_ids": {"drop": "pair_ids"},
           "ids_float": {"pair_ids": np.linspace(0, 1, 6)},
           "emb_text": {"image_embeddings": np.array(["a"] * 6)},
           "emb_1d": {"text_embeddings": np.ones(6, dtype=np.float32)},
           "rows_differ": {"text_embeddings": np.ones((5, 3), dtype=np.float32)},
           "meta_list": {"metadata": [1, 2]}}
    for name, change in bad.items():
        with pytest.raises(ValueError, match="is not a valid ASIF model file") as caught:
            AsifModel.load(_model_file(tmp_path, name, **change))
        assert "\n" not in str(caught.value), name
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a valid ASIF model file"):
        AsifModel.load(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------- limits + CSV

def test_row_limit_and_bounded_memory_on_a_1m_row_csv(tmp_path):
    """A 16 MB CSV of 1M rows: rows are streamed and reading stops at the row limit, so the peak
    memory is what the accepted rows need, not the file (measured in a fresh process)."""
    Image.new("RGB", (16, 16)).save(tmp_path / "a.jpg")
    with open(tmp_path / "captions.csv", "w") as f:
        f.write("image,caption\n")
        for i in range(1_000_000):
            f.write(f"a.jpg,c{i}\n")
    assert (tmp_path / "captions.csv").stat().st_size > 10e6
    code = ("import resource, sys; from core import data as D; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            f"p = D.load_pairs_csv({str(tmp_path / 'captions.csv')!r}); "
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "print(len(p), sorted(p.report.kinds()), (peak - base) // 1024)")
    env = dict(os.environ, ROSETTA_MAX_ROWS="20000", ROSETTA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    n, kinds, grew_mb = int(out[0]), " ".join(out[1:-1]), int(out[-1])
    assert n == 20_000 and "too_large" in kinds
    assert grew_mb < 40, f"loading 20,000 rows of a 1M-row file grew the process by {grew_mb} MB"


def test_one_overlong_caption_skips_that_row_only(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.jpg")
    rows = ["a.jpg,before"] + ["a.jpg," + "x" * 1_000_000] + [f"a.jpg,after {i}" for i in range(3)] + \
        ["a.jpg," + "y" * (D.MAX_CAPTION_BYTES + 10)]
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    pairs = D.load_pairs(tmp_path)
    assert pairs.captions == ["before", "after 0", "after 1", "after 2"]
    assert sorted(pairs.report.items("too_long")) == ["captions.csv:3", "captions.csv:7"]


def test_unterminated_quote_reported_with_its_line(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.jpg")
    (tmp_path / "captions.csv").write_text(
        'image,caption\na.jpg,one\na.jpg,"two is never closed\na.jpg,three\na.jpg,four\n')
    pairs = D.load_pairs(tmp_path)
    assert pairs.captions == ["one", "three", "four"]
    [problem] = pairs.report.problems
    assert problem.kind == "bad_quote" and "line 3" in problem.message


def test_utf16_csv_with_bom_is_decoded(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.jpg")
    (tmp_path / "captions.csv").write_bytes("image,caption\na.jpg,ein Hund im Schnee\n".encode("utf-16"))
    pairs = D.load_pairs(tmp_path)
    assert pairs.captions == ["ein Hund im Schnee"] and pairs.report.kinds() == {"encoding"}
    (tmp_path / "captions.csv").write_bytes("image,caption\na.jpg,x\n".encode("utf-16-le"))  # no BOM
    report = D.load_pairs(tmp_path).report
    assert report.fatal and "UTF-16" in _messages(report)


def test_report_lists_at_most_max_reported_per_kind_but_counts_all(tmp_path):
    Image.new("RGB", (16, 16)).save(tmp_path / "a.jpg")
    lines = ["a.jpg,ok"] + [f"missing{i}.jpg,x" for i in range(D.MAX_REPORTED + 500)]
    (tmp_path / "captions.csv").write_text("image,caption\n" + "\n".join(lines) + "\n")
    report = D.load_pairs(tmp_path).report
    assert len(report.problems) == D.MAX_REPORTED
    assert report.by_kind() == {"missing_image": D.MAX_REPORTED + 500}
    assert f"{D.MAX_REPORTED + 500:,} missing image" in report.summary()


# ----------------------------------------------------------------------------- uploads

def test_stage_uploads_one_way_for_files_and_zips(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSETTA_CACHE_DIR", str(tmp_path / "cache"))
    files = [("a.jpg", _jpeg_bytes()), ("../b.jpg", _jpeg_bytes((1, 2, 3))), (".env", b"x"),
             ("captions.csv", b"image,caption\na.jpg,an upload\nb.jpg,base name only\n")]
    pairs = D.stage_uploads(files)
    assert pairs.captions == ["an upload", "base name only"]
    assert pairs.report.items("unsafe_path") == [".env"]
    assert sorted(p.name for p in pairs.staging.path.iterdir()) == ["a.jpg", "b.jpg", "captions.csv"]
    zipped = D.stage_uploads([("set.zip", _stored_zip(_good_entries()))])
    assert zipped.captions == ["a good photo"]
    assert "missing_file" in D.stage_uploads([("a.jpg", _jpeg_bytes())]).report.kinds()
    folders = [pairs.staging.path, zipped.staging.path]
    del pairs, zipped
    gc.collect()
    assert not any(f.exists() for f in folders)

"""Dataset loaders on the real demo data and on every kind of bad input (built in tmp_path)."""
from __future__ import annotations

import io
import json
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data as D


# ------------------------------------------------------------------------------------- helpers

def _jpeg(path: Path, color=(10, 120, 200), size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


def _jpeg_bytes(color=(10, 120, 200), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data (a decompression bomb
    candidate): PIL reads the size from IHDR without decoding."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + \
            struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _csv(path: Path, rows, header=("image", "caption")) -> Path:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _good_folder(root: Path, n: int = 3) -> Path:
    for i in range(n):
        _jpeg(root / "images" / f"{i}.jpg", color=(40 * i, 100, 200 - 30 * i))
    _csv(root / "captions.csv", [(f"{i}.jpg", f"caption {i} {k}") for i in range(n) for k in range(2)])
    return root


# --------------------------------------------------------------------------------- real data

def test_flickr8k_folder_loads_every_row(data_root):
    pairs = D.load_pairs(data_root / "flickr8k")
    assert len(pairs) == 35_000 and len(pairs.images) == 7_000
    assert pairs.report.ok and not pairs.report.fatal  # only warnings
    assert pairs.report.kinds() <= {"duplicate_pair", "duplicate_image"}
    assert len(pairs.image_keys) == 7_000 and all(len(k) == 32 for k in pairs.image_keys)
    # an image with several captions: one pair per row, ids unique and stable
    assert np.bincount(pairs.pair_image).min() >= 1 and np.bincount(pairs.pair_image).max() >= 5
    assert len(set(pairs.pair_ids)) == len(pairs)
    assert pairs.pair_ids[0].endswith("#0") and pairs.pair_paths[0] == pairs.images[0]
    json.dumps(pairs.report.to_dict())


def test_cifar10_test_class_folders(data_root):
    labeled = D.load_labeled(data_root / "cifar10" / "test")
    assert len(labeled) == 10_000 and labeled.class_names[:3] == ["airplane", "automobile", "bird"]
    assert np.bincount(labeled.labels).tolist() == [1000] * 10 and labeled.report.ok
    small = labeled.per_class(3)
    assert len(small) == 30 and np.bincount(small.labels).tolist() == [3] * 10


def test_demo_location_setting(tmp_path, monkeypatch, data_root):
    assert D.demo_sources()["flickr8k"] == data_root / "flickr8k"
    monkeypatch.setenv("ROSETTA_DATA", str(tmp_path / "nowhere"))
    assert D.data_dir() is None
    with pytest.raises(ValueError, match="flickr8k/captions.csv"):
        D.data_dir(required=True)
    monkeypatch.setenv("ROSETTA_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="incomplete"):
        D.demo_sources(required=True)


# ----------------------------------------------------------------------------- bad inputs

def test_good_folder_csv_and_subset(tmp_path):
    pairs = D.load_pairs(_good_folder(tmp_path / "set"))
    assert pairs.report.ok and len(pairs) == 6 and len(pairs.images) == 3
    assert pairs.captions_of(1) == [2, 3]
    sub = pairs.subset([5, 0])
    assert sub.captions == ["caption 2 1", "caption 0 0"] and sub.pair_image.tolist() == [0, 1]
    # a CSV path with an explicit image root works the same
    same = D.load_pairs_csv(tmp_path / "set" / "captions.csv", tmp_path / "set" / "images")
    assert same.captions == pairs.captions


def test_missing_columns_are_fatal(tmp_path):
    root = _good_folder(tmp_path / "set")
    _csv(root / "captions.csv", [("0.jpg", "a")], header=("file", "text"))
    pairs = D.load_pairs(root)
    assert len(pairs) == 0 and pairs.report.fatal and not pairs.report.ok
    assert "missing_column" in pairs.report.kinds()
    assert "image, caption" in pairs.report.problems[0].message
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert D.load_pairs(empty).report.fatal


def test_captions_naming_missing_images_are_listed_rest_loads(tmp_path):
    root = _good_folder(tmp_path / "set")
    with open(root / "captions.csv", "a") as f:
        f.write("ghost.jpg,a caption for a file that is not there\n")
        f.write("ghost.jpg,another one\n")
        f.write("../outside.jpg,escape attempt\n")
    pairs = D.load_pairs(root)
    assert len(pairs) == 6
    assert pairs.report.items("missing_image") == ["ghost.jpg"]  # listed once per image
    assert pairs.report.items("unsafe_path") == ["../outside.jpg"]


def test_corrupt_truncated_and_non_image_files_skipped(tmp_path):
    root = _good_folder(tmp_path / "set")
    (root / "images" / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "images" / "notes.txt").write_text("just some notes")
    (root / "images" / "empty.png").write_bytes(b"")
    full = _jpeg_bytes(size=(200, 200))
    (root / "images" / "cut.jpg").write_bytes(full[: len(full) // 2])
    with open(root / "captions.csv", "a") as f:
        for name in ("noise.jpg", "notes.txt", "empty.png", "cut.jpg"):
            f.write(f"{name},caption of {name}\n")
    pairs = D.load_pairs(root)
    assert len(pairs) == 6 and len(pairs.images) == 3
    kinds = {p.item: p.kind for p in pairs.report.problems}
    assert kinds == {"noise.jpg": "not_image", "notes.txt": "not_image", "empty.png": "corrupt_image",
                     "cut.jpg": "corrupt_image"}


def test_non_utf8_rows_reported_rest_loads(tmp_path):
    root = _good_folder(tmp_path / "set")
    with open(root / "captions.csv", "ab") as f:
        f.write("0.jpg,un caf\u00e9 tr\u00e8s bon\n".encode("latin-1"))
        f.write("1.jpg,caf\u00e9 in UTF-8 is fine\n".encode("utf-8"))
    pairs = D.load_pairs(root)
    assert len(pairs) == 7 and "caf\u00e9 in UTF-8 is fine" in pairs.captions
    (problem,) = pairs.report.problems
    assert problem.kind == "non_utf8" and problem.item == "captions.csv:8"


def test_decompression_bomb_rejected_by_header(tmp_path):
    root = _good_folder(tmp_path / "set")
    (root / "images" / "bomb.png").write_bytes(_png_bomb(60_000, 60_000))
    with open(root / "captions.csv", "a") as f:
        f.write("bomb.png,looks innocent\n")
    pairs = D.load_pairs(root)
    assert len(pairs) == 6 and pairs.report.items("too_many_pixels") == ["bomb.png"]
    assert "decompression bomb" in pairs.report.problems[0].message
    # the limit is a parameter
    strict = D.load_pairs(root, max_pixels=1000)
    assert len(strict) == 0 and len(strict.report.items("too_many_pixels")) == 4


def test_duplicates_are_reported_and_kept(tmp_path):
    root = _good_folder(tmp_path / "set")
    (root / "images" / "copy.jpg").write_bytes((root / "images" / "0.jpg").read_bytes())
    with open(root / "captions.csv", "a") as f:
        f.write("0.jpg,caption 0 0\n")
        f.write("copy.jpg,a copy\n")
    pairs = D.load_pairs(root)
    assert len(pairs) == 8 and pairs.report.ok
    assert pairs.report.by_kind() == {"duplicate_pair": 1, "duplicate_image": 1}
    assert all(p.severity == "warning" for p in pairs.report.problems)


def _zip_with(entries: dict[str, bytes], links: dict[str, str] = {}) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, payload in entries.items():
            z.writestr(name, payload)
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def test_zip_upload_rejects_absolute_dotdot_and_links(tmp_path):
    csv_text = "image,caption\nimages/a.jpg,a blue thing\nimages/b.jpg,a red thing\nlink.jpg,via a link\n"
    payload = _zip_with(
        {"data/captions.csv": csv_text.encode(), "data/images/a.jpg": _jpeg_bytes(),
         "data/images/b.jpg": _jpeg_bytes((200, 0, 0)),
         "/etc/evil.jpg": b"x", "data/../../escape.txt": b"x"},
        links={"data/link.jpg": "/etc/passwd"})
    dest = tmp_path / "extract"
    pairs = D.load_pairs_zip(payload, dest=dest)
    assert len(pairs) == 2 and sorted(pairs.captions) == ["a blue thing", "a red thing"]
    report = pairs.report
    assert set(report.items("unsafe_path")) == {"/etc/evil.jpg", "data/../../escape.txt"}
    assert report.items("link_entry") == ["data/link.jpg"]
    assert report.items("missing_image") == ["link.jpg"]
    assert not (tmp_path / "escape.txt").exists() and not (dest / "data" / "link.jpg").exists()
    assert all(p.resolve().is_relative_to(dest.resolve()) for p in dest.rglob("*"))
    # the same zip from a file path, through the dispatcher (extracted under the cache dir)
    zpath = tmp_path / "upload.zip"
    zpath.write_bytes(payload)
    assert len(D.load_pairs(zpath)) == 2


def test_bad_zip_and_zip_without_captions(tmp_path):
    bad = D.load_pairs(b"this is not a zip")
    assert bad.report.fatal and "bad_zip" in bad.report.kinds()
    empty = D.load_pairs_zip(_zip_with({"a.jpg": _jpeg_bytes()}), dest=tmp_path / "x")
    assert empty.report.fatal and "missing_file" in empty.report.kinds()


def test_coco_json(tmp_path):
    _jpeg(tmp_path / "images" / "1.jpg")
    _jpeg(tmp_path / "images" / "2.jpg", color=(0, 0, 0))
    coco = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"},
                       {"id": 3, "file_name": "3.jpg"}],
            "annotations": [{"image_id": 1, "caption": "first"}, {"image_id": 1, "caption": "again"},
                            {"image_id": 2, "caption": "second"}, {"image_id": 9, "caption": "orphan"},
                            {"image_id": 3, "caption": "no file"}, {"image_id": 2}]}
    path = tmp_path / "captions_val.json"
    path.write_text(json.dumps(coco))
    pairs = D.load_pairs(path)
    assert pairs.captions == ["first", "again", "second"] and len(pairs.images) == 2
    assert pairs.report.by_kind() == {"missing_image": 2, "missing_column": 1}
    path.write_text(json.dumps({"images": []}))
    assert "missing_column" in D.load_pairs(path).report.kinds()
    path.write_text("{not json")
    assert "bad_json" in D.load_pairs(path).report.kinds()


def test_labeled_folder_with_bad_files(tmp_path):
    root = tmp_path / "labeled"
    for cls in ("cat", "dog"):
        for i in range(3):
            _jpeg(root / cls / f"{i}.jpg", color=(i * 50, 10 if cls == "cat" else 200, 90))
    (root / "cat" / "readme.txt").write_text("not an image")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "dog" / "bomb.png").write_bytes(_png_bomb(50_000, 50_000))
    (root / "empty").mkdir()
    (root / "stray.csv").write_text("x")
    (root / "dog" / "link.jpg").symlink_to(root / "cat" / "0.jpg")
    labeled = D.load_labeled(root)
    assert labeled.class_names == ["cat", "dog"] and len(labeled) == 6
    kinds = {p.item: p.kind for p in labeled.report.problems}
    assert kinds["cat/readme.txt"] == "not_image"
    assert kinds["dog/broken.jpg"] in ("not_image", "corrupt_image")
    assert kinds["dog/bomb.png"] == "too_many_pixels" and kinds["dog/link.jpg"] == "link_entry"
    assert kinds["empty"] == "empty_class" and kinds["stray.csv"] == "ignored_file"
    with pytest.raises(ValueError, match="not a folder"):
        D.load_labeled(tmp_path / "missing")


def test_report_is_ready_for_a_table(tmp_path):
    root = _good_folder(tmp_path / "set")
    with open(root / "captions.csv", "a") as f:
        f.write("ghost.jpg,x\n")
    report = D.load_pairs(root).report
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["counts"] == {"pairs": 6, "images": 3}
    assert as_dict["problems"] == [{"kind": "missing_image", "item": "ghost.jpg",
                                    "message": as_dict["problems"][0]["message"], "severity": "error"}]
    assert "1 missing image" in report.summary()


def test_missing_sources_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        D.load_pairs(tmp_path / "nope")
    folder = tmp_path / "no_csv"
    folder.mkdir()
    report = D.load_pairs(folder).report
    assert report.fatal and "captions.csv" in report.problems[0].message


# ------------------------------------------------------------------------------------------ CLI

def test_cli_embed_and_info(tmp_path, monkeypatch, capsys):
    from core.__main__ import main

    monkeypatch.setenv("ROSETTA_CACHE_DIR", str(tmp_path / "cache"))
    root = _good_folder(tmp_path / "set")
    with open(root / "captions.csv", "a") as f:
        f.write("ghost.jpg,x\n")
    assert main(["embed", "--pairs", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 6 and out["computed"] == {"images": 3, "captions": 6}
    assert out["report"]["problem_counts"] == {"missing_image": 1}
    assert main(["embed", "--pairs", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == {"images": 0, "captions": 0}

    labeled = tmp_path / "labeled"
    _jpeg(labeled / "a" / "1.jpg", color=(0, 100, 200))  # the same bytes as images/0.jpg
    _jpeg(labeled / "b" / "1.jpg", color=(0, 0, 0))
    assert main(["embed", "--labeled", str(labeled), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 1  # a/1.jpg hit the cache

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cache"]["location"] == str(tmp_path / "cache")
    vectors = {m["model_id"].split("|")[0]: m["vectors"] for m in info["cache"]["models"]}
    assert vectors == {"efficientnet-lite0": 4, "minilm": 6}
    assert {e["name"] for e in info["encoders"]} >= {"efficientnet-lite0", "minilm", "mpnet"}

    assert main(["embed", "--pairs", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

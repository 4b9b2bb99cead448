"""The curated-pairs CSV export is safe to open in a spreadsheet (no cell starts a formula) and reads
back as the same pairs (issue #16: spreadsheet formula injection)."""
from __future__ import annotations

import csv
import io

from PIL import Image

from core import data, store

#: captions a hostile pair list may carry: each would be run by a spreadsheet as a formula
HOSTILE = ['=HYPERLINK("http://example.com/x","click")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
           "\t=1+1", "\r=1+1"]


def _workspace(tmp_path, hostile=HOSTILE):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["plain.jpg", "-dash.jpg", "=eq.jpg"]
    for i, name in enumerate(names):  # real pictures, made here
        Image.new("RGB", (32, 32), (40 * i, 90, 200 - 40 * i)).save(folder / name)
    captions = list(hostile) + ["a dog runs on the grass", "it's a 'quoted' caption", "'=already quoted",
                                "'tis a dog"]
    pairs = [(f"demo:{names[i % len(names)]}", c) for i, c in enumerate(captions)]
    ws = store.create_workspace("w", pairs, [("demo:plain.jpg", "dog")], root=tmp_path / "ws")
    return ws, folder, pairs


#: what a spreadsheet runs as a formula (OWASP's CSV injection list), written out here, not read from the code
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def test_no_exported_cell_starts_a_formula(tmp_path):
    ws, _, pairs = _workspace(tmp_path)
    rows = list(csv.reader(io.StringIO(ws.export_pairs_csv().decode("utf-8"))))[1:]
    assert len(rows) == len(pairs)
    for (_, image, caption), (ref, original) in zip(rows, pairs):
        for cell, text in ((image, ref.removeprefix("demo:")), (caption, original)):
            assert not cell.startswith(FORMULA), cell
            assert cell == ("'" + text if text.lstrip("'").startswith(FORMULA) else text)
    guarded = {c: data.spreadsheet_cell(c) for c in ("'=already quoted", "'tis a dog", "-dash.jpg", "\tx")}
    assert guarded == {"'=already quoted": "''=already quoted", "'tis a dog": "'tis a dog",
                       "-dash.jpg": "'-dash.jpg", "\tx": "'\tx"}


def test_the_export_reads_back_as_the_same_pairs(tmp_path):
    # (a caption holding a carriage return is not read back by the CSV importer, guarded or not)
    ws, folder, pairs = _workspace(tmp_path, [c for c in HOSTILE if "\r" not in c])
    exported = tmp_path / "pairs.csv"
    exported.write_bytes(ws.export_pairs_csv())
    back = data.load_pairs_csv(exported, image_root=folder)
    assert back.report.ok, back.report.summary()
    # the importer strips surrounding white space from every caption, guarded or not
    assert back.captions == [c.strip() for _, c in pairs]
    assert [back.image_names[i] for i in back.pair_image] == [r.removeprefix("demo:") for r, _ in pairs]

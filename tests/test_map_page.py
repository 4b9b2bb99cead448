"""AppTest: the Map page on the small demo — the map draws, flags and UMAP arrive, a filtered
selection is previewed, removed (one edit) and undone; text search finds pairs; hover text is escaped."""
from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np

from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from app_helpers import APP, rerun_until, run_ready, switch_and_wait, texts
from core import store
from core.cache import EmbeddingCache
from core.live import LiveModel, WorkspaceVectors


def _acc(at) -> tuple[str, str]:
    """(tuning, test) accuracy as the page's header shows them."""
    shown = {m.label.split(" (")[0]: m.value for m in at.metric}
    return shown["Tuning accuracy"], shown["Test accuracy"]


def _ws(root) -> store.Workspace:
    return store.Workspace(store.list_workspaces(root)[0])


def _keyed(widgets, prefix: str):
    return [w for w in widgets if (w.key or "").startswith(prefix)][0]


def _figure(at) -> dict:
    charts = at.get("plotly_chart")
    assert charts, "no map on the page"
    return json.loads(charts[0].proto.spec)


def _arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ``{"dtype", "bdata"}`` (plotly >= 6)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


HIGHLIGHT = "anchors behind the Classify picture"


def _points(spec) -> int:
    return sum(len(_arr(t["x"])) for t in spec["data"] if t["name"] != HIGHLIGHT)


def _open_map(at, timeout: float = 240):
    """Open the Map page and wait until UMAP and the flags are ready (caption says UMAP)."""
    return switch_and_wait(at, "pages/map.py", lambda a: "UMAP layout of the photo embeddings" in texts(a)
                           and "Computing flags" not in texts(a), timeout)


def _add_and_open_map(at, ws, caption: str) -> int:
    """Add a pair (the workspace's first photo with ``caption``) from another process's view, open
    the Map and wait until the model is rebuilt with it; its pair id."""
    live = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    (pid,) = live.add([(ws.all_pairs()[0].image, caption)], note="test").op.pair_ids
    switch_and_wait(at, "pages/map.py", lambda a: bool(a.get("plotly_chart")), 120)
    return pid


def test_map_select_preview_remove_undo(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=180))
    at = _open_map(at)
    ws = _ws(demo_root)
    n_pairs = ws.counts()["pairs"]
    spec = _figure(at)
    assert _points(spec) == n_pairs  # every pair is on the map
    # the anchors behind the picture explained on the Classify page (the app's start page) are starred
    starred = [t for t in spec["data"] if t["name"] == HIGHLIGHT]
    assert starred and 0 < len(_arr(starred[0]["x"])) <= 20
    assert all(t["type"] == "scattergl" for t in spec["data"])
    start = _acc(at)

    # colour by a flag column: its values come from core.flags (numbers per pair)
    at.selectbox(key="map_colour").set_value("photo outlier score").run()
    colour = _arr(_figure(at)["data"][0]["marker"]["color"])
    assert len(colour) == n_pairs and colour.max() > colour.min()

    # select every pair whose caption mentions a word, preview, remove, undo; the word is the first of
    # a few whose removal changes the accuracy by the engine's own what-if
    live = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    pairs = ws.pairs()
    word, expected = None, None
    for w in ("dog", "man", "water", "girl", "ball", "red", "grass", "street"):
        ids = [p.pair_id for p in pairs if w in p.caption.lower()]
        what = live.what_if_remove(ids) if 0 < len(ids) < len(pairs) else None
        if what is not None and what.after.tune != what.before.tune:
            word, expected = w, what.after
            break
    assert word, "no word's pairs change the accuracy on the small demo"
    at.text_input(key="map_text").set_value(word).run()
    shown = _points(_figure(at))
    assert 0 < shown < n_pairs
    _keyed(at.checkbox, "map_all").check().run()
    assert "What if these" in texts(at)
    assert ws.edits() == []  # a preview commits nothing
    _keyed(at.button, "remove_map").click().run()
    assert [e.kind for e in ws.edits()] == ["remove"]
    assert len(ws.edits()[0].pair_ids) == shown
    assert ws.counts()["pairs"] == n_pairs - shown
    assert _acc(at) == (f"{100 * expected.tune:.1f}%", f"{100 * expected.test:.1f}%")
    assert _acc(at)[0] != start[0]
    at.button(key="map_undo").click().run()
    assert _acc(at) == start and ws.counts()["pairs"] == n_pairs
    assert not at.exception


def test_map_search_and_hostile_caption(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=180))
    ws = _ws(demo_root)
    pid = _add_and_open_map(at, ws, "<b>bold</b> & <script>alert(1)</script> a dog")
    hover = [s for t in _figure(at)["data"] for s in t["text"] if f"#{pid} " in s]
    assert hover and "<script>" not in hover[0] and "&lt;script&gt;" in hover[0]

    at.text_input(key="search_text").set_value("a dog running on the grass").run()
    rerun_until(at, lambda a: "pairs in" in texts(a), "the search (prepared in a background job)")
    table = at.dataframe[-1].value if hasattr(at.dataframe[-1], "value") else None
    assert table is not None and len(table) > 0
    assert table["caption"].str.contains("dog", case=False).mean() >= 0.5


def test_map_search_by_uploaded_picture(demo_root):
    """Upload a real Flickr8k photo of the workspace: its own pairs come first among the image
    encoder's neighbours (similarity ~1) and first in ASIF image -> caption retrieval; a file that is
    not a picture gets one sentence and no results."""
    at = run_ready(AppTest.from_file(APP, default_timeout=180))
    ws = _ws(demo_root)
    pairs = ws.pairs()
    photo = pairs[len(pairs) // 2].image
    own = {p.pair_id for p in pairs if p.image == photo}
    at.switch_page("pages/map.py").run()
    at.radio(key="search_how").set_value("picture").run()
    at.file_uploader(key="search_pic").set_value(("query.jpg", ws.resolve(photo).read_bytes(), "image/jpeg")).run()
    rerun_until(at, lambda a: "pairs in" in texts(a), "the search (prepared in a background job)")
    neighbours = at.dataframe[-1].value
    first = neighbours.iloc[:len(own)]
    assert set(first["pair"].astype(int)) == own  # the photo's own captions, all of them, first
    assert (first["score"] > 0.99).all() and neighbours["score"].iloc[len(own)] < 0.99
    assert neighbours["score"].is_monotonic_decreasing

    at.radio(key="search_mode").set_value("ASIF retrieval").run()
    assert not at.exception, [e.value for e in at.exception]
    retrieved = at.dataframe[-1].value
    assert len(retrieved) > len(own) and retrieved["score"].is_monotonic_decreasing
    assert int(retrieved["pair"].iloc[0]) in own  # the picture's own pair ranks first

    at.file_uploader(key="search_pic").set_value(("notes.jpg", b"not a picture at all", "image/jpeg")).run()
    assert not at.exception, [e.value for e in at.exception]
    (error,) = [e.value for e in at.error]
    assert error.startswith("That picture could not be read") and "not a picture at all" not in error
    assert "pairs in" not in texts(at)


def test_map_export_guards_formulas_and_names_portable_paths(demo_root, monkeypatch):
    """The selection's "Export CSV": a caption a spreadsheet would run as a formula starts with ``'``
    and the image is named relative to the data folder, as in the curated-pairs export."""
    stores: list[MemoryMediaFileStorage] = []  # Streamlit's own in-memory file store, kept to read the download

    class Kept(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", Kept)
    at = run_ready(AppTest.from_file(APP, default_timeout=180))
    ws = _ws(demo_root)
    formula = '=HYPERLINK("http://example.invalid","a dog")'
    pid = _add_and_open_map(at, ws, formula)
    at.text_input(key="map_text").set_value("HYPERLINK").run()
    _keyed(at.checkbox, "map_all").check().run()
    assert not at.exception, [e.value for e in at.exception]
    (button,) = [b for b in at.get("download_button") if b.proto.label == "Export CSV"]
    data = stores[-1].get_file(button.proto.url.rsplit("/", 1)[-1]).content
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert [int(r["pair_id"]) for r in rows] == [pid]
    assert rows[0]["caption"] == "'" + formula
    assert rows[0]["image"] == store.portable_ref(ws.all_pairs()[0].image) and not rows[0]["image"].startswith("demo:")

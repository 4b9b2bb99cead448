"""AppTest: the Data page imports precomputed vectors (core.interchange) into a new workspace; the
Settings page shows the ANN index's measured recall (ui/ann_panel.py)."""
from __future__ import annotations

import re

from streamlit.testing.v1 import AppTest

from app_helpers import APP, open_curate, run_ready, switch_and_wait, texts
from core import store
from core.embedded import EmbeddedPairs
from core.interchange import export_pairs

EXPORTED_IMAGES = 30


def _export(flickr_pairs, embedding_cache, dest):
    """A clip-retrieval folder of the first Flickr8k pairs, from the vectors the cache holds."""
    pairs = EmbeddedPairs.from_pairset(flickr_pairs.first_images(EXPORTED_IMAGES), "efficientnet-lite0", "minilm",
                                       cache=embedding_cache)
    return pairs, export_pairs(pairs, dest, "clip-retrieval", dtype="float32")


def _data_page(at, path: str):
    at.switch_page("pages/data.py").run()
    at.radio(key="byo_how").set_value("Precomputed vectors").run()
    at.text_input(key="byo_vectors_path").set_value(path).run()
    assert not at.exception, [e.value for e in at.exception]
    return texts(at)


def test_precomputed_export_imports_into_a_workspace_that_classifies(demo_root, tmp_path, monkeypatch,
                                                                     flickr_pairs, embedding_cache):
    mine = tmp_path / "mine"
    pairs, folder = _export(flickr_pairs, embedding_cache, mine / "clip")
    monkeypatch.setenv("ROSETTA_ALLOWED_ROOTS", str(mine))
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    shown = _data_page(at, str(folder))
    assert f"{len(pairs)} pairs from {EXPORTED_IMAGES} pictures" in shown
    assert "1280-d pictures" in shown and "minilm 384-d captions" in shown
    assert at.text_input(key="byo_image_encoder").value == "efficientnet-lite0"   # recorded by the export
    [t for t in at.text_input if t.label == "Name"][0].set_value("imported flickr")
    [n for n in at.number_input if n.label.startswith("CIFAR-10 test pictures")][0].set_value(5)
    [b for b in at.button if b.label == "Create workspace"][0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    ws = store.open_workspace("imported-flickr", root=demo_root)
    assert sorted(p.caption for p in ws.pairs()) == sorted(pairs.captions)
    assert ws.settings()["image_encoder"] == "efficientnet-lite0" and ws.settings()["text_encoder"] == "minilm"
    at = run_ready(at)                      # the new workspace is the current one; its model builds
    at.switch_page("pages/classify.py").run()
    at = run_ready(at)
    assert re.search(r"It's an? \*\*", texts(at)), "the imported workspace does not classify"
    assert {m.label.split(" (")[0]: m.value for m in at.metric}["Anchor pairs"].replace(",", "") == str(len(pairs))


def test_precomputed_pairs_whose_pictures_are_not_here_make_a_workspace_shown_by_caption(
        demo_root, tmp_path, monkeypatch, flickr_pairs, embedding_cache):
    """Vectors whose pictures are URLs (e.g. LAION's): the workspace keeps the vectors, names the
    pictures only, says so when it is made, classifies, and Curate shows its table by caption."""
    import pyarrow.parquet as pq

    mine = tmp_path / "mine"
    pairs = EmbeddedPairs.from_pairset(flickr_pairs.first_images(EXPORTED_IMAGES), "efficientnet-lite0",
                                       "minilm", cache=embedding_cache)
    path = export_pairs(pairs, mine / "urls.parquet", "parquet", dtype="float16")
    table = pq.read_table(path)
    urls = [f"https://example.org/{i}.jpg" for i in range(table.num_rows)]
    pq.write_table(table.set_column(table.schema.get_field_index("image_path"), "image_path", [urls]), path)
    monkeypatch.setenv("ROSETTA_ALLOWED_ROOTS", str(mine))
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    _data_page(at, str(path))
    [t for t in at.text_input if t.label == "Name"][0].set_value("by caption")
    [n for n in at.number_input if n.label.startswith("CIFAR-10 test pictures")][0].set_value(5)
    [b for b in at.button if b.label == "Create workspace"][0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    toasts = " ".join(str(t.value) for t in at.toast)
    assert f"{len(pairs)} pictures of {len(pairs)} are not files the app may read" in toasts, toasts
    ws = store.open_workspace("by-caption", root=demo_root)
    assert all(p.image.startswith(store.EXTERNAL_REF + "https://") for p in ws.all_pairs())
    assert (ws.vectors_dir / "image.npy").is_file()
    at = run_ready(at)
    at.switch_page("pages/classify.py").run()
    at = run_ready(at)
    assert re.search(r"It's an? \*\*", texts(at)), "the workspace of URL pictures does not classify"
    at = open_curate(at)
    assert "Anchor pairs, most harmful first" in texts(at)


def test_precomputed_hostile_sources_are_one_sentence_and_lose_nothing(demo_root, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "badpq").mkdir(parents=True)
    secret = "ROSETTA_SECRET_PARQUET_161803"
    (mine / "badpq" / "a.parquet").write_bytes(b"PAR1" + secret.encode() + b"\x00\xff")
    (mine / "notes.txt").write_text(secret)
    monkeypatch.setenv("ROSETTA_ALLOWED_ROOTS", str(mine))
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    before = [p.name for p in store.list_workspaces(demo_root)]
    for path, why in ((str(mine / "notes.txt"), "not a folder"),
                      (str(mine / "badpq"), "could not be read as parquet"),
                      (str(mine), "no precomputed vectors")):
        shown = _data_page(at, path)
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and why in errors[0], (path, errors)
        assert errors[0].count(". ") == 0 and secret not in shown          # one sentence, no file contents
        assert "Create workspace" not in [b.label for b in at.button]
    assert [p.name for p in store.list_workspaces(demo_root)] == before


def _settings_page(at):
    """Settings with its image-search panel shown (the model (re)builds in the background)."""
    switch_and_wait(at, "pages/settings.py",
                    lambda a: "Image search" in texts(a) and "Shown once the model is ready" not in texts(a))
    return texts(at)


def test_settings_shows_exact_search_then_the_faiss_index_recall_after_lowering_its_threshold(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    shown = _settings_page(at)
    assert "Exact search" in shown and "Recall@" not in shown
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    distinct = len({p.image for p in ws.pairs()})
    at.number_input(key="ann_min_anchors").set_value(distinct)   # through the setting: FAISS from here on
    [b for b in at.button if b.label == "Save threshold"][0].click()
    at.run()
    assert ws.settings()["ann_min_anchors"] == distinct
    shown = _settings_page(at)
    assert f"FAISS IVF-SQ8 over {distinct} distinct anchor pictures" in shown, shown[-1500:]
    assert not [m for m in at.metric if m.label.startswith("Recall@")]   # measured on request only
    [b for b in at.button if b.label.startswith("Measure its recall")][0].click()
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    recall = [v for label, v in metrics.items() if label.startswith("Recall@")]
    assert recall and float(recall[0]) == 1.0      # one list, probed in full: the shortlist holds every row
    assert metrics["Same prediction as exact search"].startswith("100")   # one list probed in full: exact
    index_files = list((ws.state_dir / "ann").glob("*.faiss"))
    assert index_files, "the index was not saved with the workspace"


def test_a_text_encoder_that_cannot_run_here_is_one_sentence_naming_the_command_line(
        demo_root, tmp_path, monkeypatch, flickr_pairs, embedding_cache):
    mine = tmp_path / "mine"
    _, folder = _export(flickr_pairs, embedding_cache, mine / "clip")
    (folder / "encoders.json").unlink()               # the files no longer say which encoders made them
    monkeypatch.setenv("ROSETTA_ALLOWED_ROOTS", str(mine))
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    shown = _data_page(at, str(folder))
    assert "does not say which image encoder" in shown and "Create workspace" not in [b.label for b in at.button]
    at.text_input(key="byo_image_encoder").set_value("efficientnet-lite0").run()
    at.text_input(key="byo_text_encoder").set_value("ViT-L-14 (openai)").run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "cannot run here" in errors[0] and "--prompt-embeddings" in errors[0], errors
    assert "Create workspace" not in [b.label for b in at.button]
    before = [p.name for p in store.list_workspaces(demo_root)]
    at.text_input(key="byo_text_encoder").set_value("minilm").run()
    assert not at.error and "Create workspace" in [b.label for b in at.button]
    assert [p.name for p in store.list_workspaces(demo_root)] == before

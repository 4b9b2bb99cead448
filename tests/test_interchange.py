"""core.interchange: precomputed vectors in, on copies of pairs Rosetta itself embedded.

Real Flickr8k pairs and CIFAR-10 pictures (small subsets) are embedded with efficientnet-lite0 and
minilm, exported at test time into each format in a tmp folder, imported back, and evaluated: a
float32 copy must give the very same vectors and predictions; float16 is measured."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.asif import DEFAULT_TEMPLATES, AsifModel
from core.cache import EmbeddingCache
from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed, embed_prompts
from core.interchange import (CHECK_SAMPLE, FORMATS, detect_format, export_labeled, export_pairs,
                              import_labeled, import_pairs, labeled_imagefolder, require_encoder)

IMAGE, TEXT = "efficientnet-lite0", "minilm"


@pytest.fixture(scope="module")
def cache():
    return EmbeddingCache()


@pytest.fixture(scope="module")
def anchors(flickr_pairs, cache):
    return EmbeddedPairs.from_pairset(flickr_pairs.first_images(60), IMAGE, TEXT, cache=cache)


@pytest.fixture(scope="module")
def test_set(cifar_small, cache):
    return EmbeddedLabeled.from_labeled(cifar_small.per_class(10), IMAGE, cache=cache)


@pytest.fixture(scope="module")
def prompts(test_set, cache):
    return embed_prompts(test_set.class_names, DEFAULT_TEMPLATES, TEXT, cache=cache)


def predictions(pairs: EmbeddedPairs, test: EmbeddedLabeled, prompts) -> np.ndarray:
    model = AsifModel(pairs.pair_image_vectors, pairs.text_vectors, k=100, p=8)
    return model.classify(test.vectors, prompts[0], prompts[1], n_classes=len(test.class_names)).predictions


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_float32_copy_in_every_format_gives_the_same_vectors_and_accuracy(fmt, anchors, test_set, prompts,
                                                                            tmp_path):
    dest = tmp_path / ("pairs.parquet" if fmt == "parquet" else "pairs")
    path = export_pairs(anchors, dest, fmt, dtype="float32")
    assert detect_format(path) == fmt
    copy = import_pairs(path)                                   # encoder names come from the files
    assert (copy.image_encoder, copy.text_encoder) == (IMAGE, TEXT)
    assert copy.captions == anchors.captions
    np.testing.assert_array_equal(copy.pair_image, anchors.pair_image)
    np.testing.assert_array_equal(copy.image_vectors, anchors.image_vectors)
    np.testing.assert_array_equal(copy.text_vectors, anchors.text_vectors)
    if fmt != "imagefolder":                                    # there the pictures are links in dest
        assert copy.images == anchors.images
    original = predictions(anchors, test_set, prompts)
    np.testing.assert_array_equal(predictions(copy, test_set, prompts), original)


def test_float16_copy_changes_few_predictions(anchors, test_set, prompts, tmp_path):
    copy = import_pairs(export_pairs(anchors, tmp_path / "half.parquet", "parquet", dtype="float16"))
    assert np.abs(copy.text_vectors - anchors.text_vectors).max() < 2e-3
    original = predictions(anchors, test_set, prompts)
    half = predictions(copy, test_set, prompts)
    assert np.mean(half == original) >= 0.9
    labels = test_set.labels
    assert abs(np.mean(half == labels) - np.mean(original == labels)) <= 0.05


@pytest.mark.parametrize("fmt", ["parquet", "hf-dataset"])
def test_labeled_vectors_round_trip(fmt, test_set, tmp_path):
    path = export_labeled(test_set, tmp_path / ("t.parquet" if fmt == "parquet" else "t"), fmt, dtype="float32")
    back = import_labeled(path)
    assert back.class_names == test_set.class_names and back.encoder == IMAGE
    np.testing.assert_array_equal(back.labels, test_set.labels)
    np.testing.assert_array_equal(back.vectors, test_set.vectors)


def test_imagefolder_without_vectors_is_embedded_by_name(anchors, cache, tmp_path):
    dest = tmp_path / "plain"
    dest.mkdir()
    with open(dest / "metadata.jsonl", "w", encoding="utf-8") as f:
        for path, caption in zip(anchors.pair_paths, anchors.captions):
            name = path.split("/")[-1]
            if not (dest / name).exists():
                (dest / name).symlink_to(path)
            f.write(json.dumps({"file_name": name, "caption": caption}) + "\n")
    with pytest.raises(ValueError, match="name the image and text encoders"):
        import_pairs(dest, cache=cache)
    got = import_pairs(dest, image_encoder=IMAGE, text_encoder=TEXT, cache=cache)
    np.testing.assert_array_equal(got.pair_image_vectors, anchors.pair_image_vectors)
    np.testing.assert_array_equal(got.text_vectors, anchors.text_vectors)


def test_labeled_imagefolder_with_split_folders(data_root, tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for src in sorted((data_root / "cifar10" / "test" / cls).iterdir())[:3]:
            shutil.copy(src, tmp_path / "test" / cls / src.name)   # load_labeled refuses links
    (tmp_path / "train").mkdir()
    labeled = labeled_imagefolder(tmp_path)                     # "test" is chosen
    assert labeled.class_names == ["cat", "dog"] and len(labeled) == 6
    with pytest.raises(ValueError, match="split folders"):
        labeled_imagefolder(tmp_path, split="validation")


def test_encoder_names_are_required_checked_and_never_contradicted(anchors, tmp_path):
    path = export_pairs(anchors, tmp_path / "c", "clip-retrieval", dtype="float16")
    (path / "encoders.json").unlink()                           # clip-retrieval's own output names none
    with pytest.raises(ValueError, match="--image-encoder"):
        import_pairs(path)
    with pytest.raises(ValueError, match="1280-d"):
        import_pairs(path, image_encoder="mpnet", text_encoder=TEXT)   # a 768-d encoder
    labelled = import_pairs(path, image_encoder="ViT-L-14 (somebody's)", text_encoder=TEXT)
    assert labelled.image_encoder == "ViT-L-14 (somebody's)"
    with pytest.raises(ValueError, match="cannot run it"):
        require_encoder(labelled.image_encoder, "embedding the evaluation pictures")
    require_encoder(TEXT, "embedding the class prompts")
    other = export_pairs(anchors, tmp_path / "p.parquet", "parquet")
    with pytest.raises(ValueError, match="records its text encoder"):
        import_pairs(other, text_encoder="mpnet")


def test_bad_rows_and_bad_files_get_one_sentence(anchors, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = export_pairs(anchors, tmp_path / "c", "clip-retrieval", dtype="float32")
    text = np.load(path / "text_emb" / "text_emb_0.npy")
    text[3] = np.nan
    text[7] = 0
    np.save(path / "text_emb" / "text_emb_0.npy", text)
    got = import_pairs(path)
    assert len(got) == len(anchors) - 2 and {s.index for s in got.skipped} == {3, 7}
    np.save(path / "text_emb" / "text_emb_0.npy", text[:10])
    with pytest.raises(ValueError, match="must match"):
        import_pairs(path)
    ragged = pa.table({"caption": ["a", "b"], "image_embedding": [[1.0, 0.0], [1.0]],
                       "text_embedding": [[1.0], [0.5]]})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match="different lengths"):
        import_pairs(tmp_path / "ragged.parquet", image_encoder="a", text_encoder="b")
    with pytest.raises(ValueError, match="not a precomputed-vector source"):
        import_pairs(tmp_path / "nothing-here")


def test_cli_eval_from_an_imported_copy_equals_eval_from_the_files(flickr_pairs, data_root, cache, tmp_path,
                                                                   capsys):
    import csv

    from core.__main__ import main
    from core.data import load_pairs

    folder = tmp_path / "pairs"
    (folder / "images").mkdir(parents=True)
    sub = flickr_pairs.first_images(30)
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for path, caption in zip(sub.pair_paths, sub.captions):
            w.writerow([path.split("/")[-1], caption])
    for path in sub.images:
        shutil.copy(path, folder / "images")
    test = str(data_root / "cifar10" / "test")

    def run(*argv) -> dict:
        assert main(["asif", "eval", "--test", test, "--per-class", "5", "--k", "60", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    original = run("--anchors", str(folder))
    pairs = EmbeddedPairs.from_pairset(load_pairs(folder), IMAGE, TEXT, cache=cache)
    copy = export_pairs(pairs, tmp_path / "copy", "clip-retrieval", dtype="float32")
    imported = run("--anchors", str(copy))
    assert imported["accuracy"] == original["accuracy"] and imported["n_anchors"] == original["n_anchors"] == 150
    assert imported["per_class_accuracy"] == original["per_class_accuracy"]
    assert (imported["image_encoder"], imported["text_encoder"]) == (IMAGE, TEXT)

    labeled = EmbeddedLabeled.from_labeled(labeled_imagefolder(test).per_class(5), IMAGE, cache=cache)
    vectors = export_labeled(labeled, tmp_path / "test.parquet", dtype="float32")
    assert main(["asif", "eval", "--anchors", str(copy), "--test", str(vectors), "--k", "60", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == original["accuracy"]

    (copy / "encoders.json").write_text(json.dumps({"image_encoder": IMAGE, "text_encoder": "their-text-model"}))
    assert main(["asif", "eval", "--anchors", str(copy), "--test", str(vectors), "--k", "60", "--json"]) == 2
    assert "their-text-model" in capsys.readouterr().err                   # says which encoder is missing
    prompts, _ = embed_prompts(labeled.class_names, DEFAULT_TEMPLATES, TEXT, cache=cache)
    np.save(tmp_path / "prompts.npy", prompts)
    assert main(["asif", "eval", "--anchors", str(copy), "--test", str(vectors), "--k", "60", "--json",
                 "--prompt-embeddings", str(tmp_path / "prompts.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == original["accuracy"]



def _hostile_refs(path, tmp_path) -> list[str]:
    """Rewrite a parquet export's picture paths: the first picture becomes a path outside the
    allowed folders (a real picture there), the second a URL, the third a stored-reference escape."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    refs = table.column("image_path").to_pylist()
    distinct = list(dict.fromkeys(refs))
    outside = tmp_path / "outside.jpg"
    shutil.copy(distinct[0], outside)
    swap = {distinct[0]: str(outside), distinct[1]: "https://example.org/x.jpg", distinct[2]: "ws:../../workspace.sqlite"}
    pq.write_table(table.set_column(table.schema.get_field_index("image_path"), "image_path",
                                    [[swap.get(r, r) for r in refs]]), path)
    return list(swap.values())


def test_a_workspace_of_imported_vectors_classifies_as_its_vectors_and_survives_edits_and_reopening(
        anchors, test_set, prompts, cifar_small, data_root, cache, tmp_path):
    """Imported pairs become a workspace that keeps their vectors (memory-mapped, not copied): its
    model classifies exactly as an AsifModel of the imported vectors; pictures outside the allowed
    folders, URLs and reference escapes are named only (never read); a removal and an addition
    re-open to the same numbers; the encoders cannot be swapped under the vectors."""
    from core import store
    from core.interchange import create_vector_workspace
    from core.live import LiveModel, WorkspaceVectors

    path = export_pairs(anchors, tmp_path / "c.parquet", "parquet", dtype="float32")
    hostile = _hostile_refs(path, tmp_path)
    pairs = import_pairs(path)
    labeled = cifar_small.per_class(10)
    items = [(p, labeled.class_names[y]) for p, y in zip(labeled.paths, labeled.labels.tolist())]
    ws, named = create_vector_workspace("imported", pairs, items, cache, settings={"k": 100},
                                        roots=[data_root], root=tmp_path / "ws")
    assert named == 3
    refs = {p.image for p in ws.all_pairs()}
    assert {store.EXTERNAL_REF + h for h in hostile} <= refs
    assert all(not ws.resolve(r).is_file() for r in refs if r.startswith(store.EXTERNAL_REF))
    assert sum(ws.resolve(r).is_file() for r in refs) == len(pairs.images) - 3     # thumbnails elsewhere

    live = LiveModel(ws, WorkspaceVectors(ws, cache))
    assert isinstance(live.current_model().image_embeddings, np.memmap)             # mapped, not copied
    v = live.vectors
    want = AsifModel(pairs.pair_image_vectors, pairs.text_vectors, k=100, p=v.p).classify(
        v.item_vecs, v.prompts, v.prompt_classes, n_classes=len(v.classes)).predictions
    np.testing.assert_array_equal(live.session.predictions, want)

    live.remove([0, 5, 6])
    photo = str(data_root / "flickr8k" / "images" / sorted(p.name for p in (data_root / "flickr8k" / "images").iterdir())[-1])
    live.add([(photo, "a picture added by hand")])
    again = LiveModel(ws, WorkspaceVectors(ws, cache))
    np.testing.assert_array_equal(again.session.predictions, live.session.predictions)
    assert again.active_ids() == live.active_ids() and again.n_anchors == len(pairs) - 3 + 1
    current = again.current_model()
    fresh = AsifModel(current.image_embeddings, current.text_embeddings, k=100, p=v.p)
    np.testing.assert_array_equal(fresh.classify(v.item_vecs, v.prompts, v.prompt_classes,
                                                 n_classes=len(v.classes)).predictions, again.session.predictions)
    with pytest.raises(ValueError, match="imported, made by efficientnet-lite0"):
        ws.update_settings(image_encoder="efficientnet-lite2")
    copy = store.duplicate_workspace(ws, "imported copy")
    np.testing.assert_array_equal(LiveModel(copy, WorkspaceVectors(copy, cache)).session.predictions,
                                  live.session.predictions)


def test_vectors_another_model_made_are_refused_and_nothing_is_created(anchors, cifar_small, data_root, tmp_path):
    """Caption vectors the named encoder did not make (the real ones, shuffled) would give numbers
    that mean nothing: refused in one sentence, no workspace appears."""
    import dataclasses

    from core import store
    from core.interchange import create_vector_workspace

    pairs = import_pairs(export_pairs(anchors, tmp_path / "c.parquet", "parquet"))
    wrong = dataclasses.replace(pairs, text_vectors=np.roll(pairs.text_vectors, 7, axis=0))
    with pytest.raises(ValueError, match=f"caption vectors were not made by {TEXT}"):
        create_vector_workspace("wrong", wrong, [], EmbeddingCache(tmp_path / "cache"), roots=[data_root],
                                root=tmp_path / "ws")
    assert store.list_workspaces(tmp_path / "ws") == []
    with pytest.raises(ValueError, match="cannot run it"):
        create_vector_workspace("clip", dataclasses.replace(pairs, text_encoder="ViT-L-14 (openai)"), [],
                                EmbeddingCache(tmp_path / "cache"), root=tmp_path / "ws")


def test_source_key_changes_with_any_file_and_with_the_options(anchors, tmp_path):
    import os

    from core.interchange import source_key

    path = export_pairs(anchors, tmp_path / "cr", "clip-retrieval", dtype="float16")
    key = source_key(path)
    assert source_key(path) == key and source_key(path, limit=10) != key
    shard = next((tmp_path / "cr" / "text_emb").glob("*.npy"))
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # rewritten: another key
    assert source_key(path) != key
    changed = source_key(path)
    (tmp_path / "cr" / "metadata" / "extra.parquet").write_bytes(b"x")     # a file added: another key
    assert source_key(path) != changed

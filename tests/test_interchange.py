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



def test_cache_for_workspace_stores_the_imported_vectors_and_leaves_out_missing_pictures(anchors, cache, tmp_path):
    import dataclasses

    import pyarrow.parquet as pq

    from core.cache import text_key
    from core.interchange import cache_for_workspace, encoder_cache_id

    path = export_pairs(anchors, tmp_path / "c.parquet", "parquet", dtype="float16")
    table = pq.read_table(path)
    refs = table.column("image_path").to_pylist()
    elsewhere = str(tmp_path / "elsewhere.jpg")                       # a picture not on this computer
    refs = [elsewhere if r == refs[0] else r for r in refs]
    pq.write_table(table.set_column(table.schema.get_field_index("image_path"), "image_path", [refs]), path)
    pairs = import_pairs(path)
    fresh = EmbeddingCache(tmp_path / "cache")
    rows, left_out = cache_for_workspace(pairs, fresh)
    keep = [i for i in range(len(pairs)) if pairs.images[pairs.pair_image[i]] != elsewhere]
    assert left_out == refs.count(elsewhere) > 0 and len(rows) == len(keep) == len(pairs) - left_out
    img, found = fresh.lookup(encoder_cache_id(IMAGE, fresh), [fresh.file_key(r) for r, _ in rows])
    txt, found_text = fresh.lookup(encoder_cache_id(TEXT, fresh), [text_key(c) for _, c in rows])
    assert found.all() and found_text.all()
    # each row is the imported vector, or (the few it checked by embedding them again, at most
    # CHECK_SAMPLE distinct items per side) the encoder's own
    own_img = embed(IMAGE, [r for r, _ in rows], cache=cache).vectors   # the shared cache: the encoder's own
    own_txt = embed(TEXT, [c for _, c in rows], cache=cache).vectors
    for got, given, own in ((img, pairs.pair_image_vectors[keep], own_img),
                            (txt, pairs.text_vectors[keep], own_txt)):
        imported = np.all(got == given, axis=1)
        # the encoder again, up to its run-to-run round-off (1e-8), far below float16's (6e-5)
        assert np.abs(got[~imported] - own[~imported]).max(initial=0) < 1e-6
        assert len({got[i].tobytes() for i in np.flatnonzero(~imported)}) <= CHECK_SAMPLE
    with pytest.raises(ValueError, match="cannot run it"):
        cache_for_workspace(dataclasses.replace(pairs, text_encoder="ViT-L-14 (openai)"), fresh)


def test_vectors_another_model_made_never_reach_the_shared_cache(anchors, tmp_path):
    """The cache is every workspace's: caption vectors that the named encoder did not make (here
    the real ones, shuffled) are refused in one sentence and nothing is written."""
    import dataclasses

    from core.cache import text_key
    from core.interchange import cache_for_workspace, encoder_cache_id

    pairs = import_pairs(export_pairs(anchors, tmp_path / "c.parquet", "parquet"))
    wrong = dataclasses.replace(pairs, text_vectors=np.roll(pairs.text_vectors, 7, axis=0))
    fresh = EmbeddingCache(tmp_path / "cache")
    with pytest.raises(ValueError, match=f"caption vectors were not made by {TEXT}"):
        cache_for_workspace(wrong, fresh)
    cached = fresh.lookup(encoder_cache_id(TEXT, fresh), [text_key(c) for c in pairs.captions])[1]
    assert cached.sum() <= CHECK_SAMPLE  # only the sample it embedded itself (the encoder's own vectors)
    assert cache_for_workspace(pairs, fresh)[1] == 0  # the real ones pass


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

"""The Invert page: invert a demo picture into the ASIF space (live loss curve, nearest words) and show
the gap, on a small slice of the demo data."""
from __future__ import annotations

from pathlib import Path


PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "invert.py")


def test_invert_page_flow(flickr_embeddings, demo_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROSETTA_INVERT_IMAGES", "30")  # within the cached fixture subset
    at = AppTest.from_file(PAGE, default_timeout=300).run()
    assert not at.exception
    at.radio(key="invert_method").set_value(
        "Into the ASIF space (MiniLM tokens, Flickr8k anchors, no training)")
    at.number_input(key="invert_steps").set_value(10)
    at.button(key="invert_go").click().run()
    assert not at.exception
    words, captions = at.dataframe[0].value, at.dataframe[1].value  # nearest words, then captions
    assert list(words.columns) == ["word", "cosine"] and len(words) == 12
    assert words["word"].str.isalpha().all()
    assert list(captions.columns) == ["caption", "cosine"] and len(captions) == 8
    space = [o for o in at.radio(key="invert_gap_space").options if o.startswith("ASIF")][0]
    at.radio(key="invert_gap_space").set_value(space)
    at.button(key="invert_gap_go").click().run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert any(label.startswith("Gap") for label in labels)
    gap_value = float([m.value for m in at.metric if m.label.startswith("Gap")][0])
    assert 0 < gap_value < 2

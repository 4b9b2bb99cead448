"""AppTest: the Align page inside the app — CKA, shuffle curve, matching table, suspicious pairs."""
from __future__ import annotations


import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import APP, run_ready, switch_and_wait, texts


def _open_align(at, timeout=240.0):
    return switch_and_wait(at, "pages/align.py", lambda a: any(m.label == "Linear CKA" for m in a.metric), timeout)


def _frame(at, column):
    """The first dataframe shown with ``column`` (AppTest does not expose dataframe keys)."""
    for df in at.dataframe:
        v = df.value
        if column in v.columns or column in v.index:
            return v
    raise AssertionError(f"no table with {column!r}")


def test_align_page_flow(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=180))
    at = _open_align(at)
    metrics = {m.label: m.value for m in at.metric}
    lin, rbf = float(metrics["Linear CKA"]), float(metrics["RBF CKA"])
    assert 0.0 < lin < 1.0 and 0.0 < rbf < 1.0
    assert int(metrics["Pairs"].replace(",", "")) >= 100
    assert len(at.get("plotly_chart")) == 1
    # the shuffle table: CKA at 0% shuffled is the headline value and it falls with shuffling
    table = _frame(at, "linear CKA")
    row = table.loc["linear CKA"].tolist()
    assert row[0] == pytest.approx(lin, abs=0.05) and row[-1] < row[0]

    at.button(key="align_run_matching").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    mt = _frame(at, "matching accuracy %")
    assert set(mt["method"]) == {"QAP (seeded)", "Local CKA", "Linear map", "Relative reps"}
    n_query = at.number_input(key="align_nquery").value
    local = mt.set_index("method").loc["Local CKA"]
    assert float(local["top-5 %"]) > 100 * 5 / n_query  # better than chance
    assert mt.set_index("method").loc["QAP (seeded)", "top-1 %"] == "–"  # not "None"
    assert "None" not in mt.astype(str).to_numpy().ravel().tolist()
    assert at.multiselect(key="align_methods").options == ["QAP (seeded)", "Local CKA", "Linear map",
                                                          "Relative reps"]  # no raw method ids

    at.button(key="align_run_suspicious").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    sus = _frame(at, "score")
    assert len(sus) == 25 and sus["score"].is_monotonic_decreasing
    assert sus["picture"].str.startswith("data:image/jpeg").all()
    assert "Suspicious pairs" in texts(at)


def test_headline_cka_is_the_tables_unshuffled_value(demo_root):
    """The headline and the shuffle table come from one computation on the same pairs (more pairs
    than the table used to subsample)."""
    at = _open_align(run_ready(AppTest.from_file(APP, default_timeout=300)))
    at.radio(key="align_source").set_value("Flickr8k demo pairs (pick encoders)").run()
    at.number_input(key="align_limit").set_value(2500).run()
    at = _open_align(at, timeout=600) if not any(m.label == "Linear CKA" for m in at.metric) else at
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs"] == "2,500"
    table = _frame(at, "linear CKA")
    assert f"{table.loc['linear CKA'].iloc[0]:.3f}" == metrics["Linear CKA"]
    assert f"{table.loc['RBF CKA'].iloc[0]:.3f}" == metrics["RBF CKA"]

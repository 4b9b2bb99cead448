"""AppTest: Data page — upload -> validation report + preview -> new workspace; bad inputs."""
from __future__ import annotations

import io
import zipfile

from PIL import Image
from streamlit.testing.v1 import AppTest

from app_helpers import APP, run_ready, texts
from core import store


def _jpeg(color, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _open_data(at):
    at.switch_page("pages/data.py").run()
    assert not at.exception
    return at


def _upload(at, files):
    at.file_uploader(key="byo_files").set_value(files)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = texts(at)
    _sentences_only(shown + " ".join(d.value.to_string() for d in at.dataframe))
    return shown


def _sentences_only(shown: str) -> None:
    """No message shows Python's insides: bytes literals, escapes, object reprs, exception names."""
    for bad in ("b'", 'b"', "\\x", " object at 0x", "Error(", "Traceback", "<class "):
        assert bad not in shown, f"{bad!r} shown: {shown[:2000]}"


def test_upload_preview_report_and_create(demo_root):
    at = _open_data(run_ready(AppTest.from_file(APP, default_timeout=120)))
    csv = b"image,caption\nred.jpg,a red square\nblue.jpg,a blue square\nbroken.jpg,a broken file\n"
    shown = _upload(at, [("red.jpg", _jpeg((220, 20, 20)), "image/jpeg"),
                         ("blue.jpg", _jpeg((20, 20, 220)), "image/jpeg"),
                         ("broken.jpg", b"\xff\xd8\xffnot really", "image/jpeg"),
                         ("captions.csv", csv, "text/csv")])
    assert "Preview" in shown and "a red square" in shown and "a blue square" in shown
    assert any("problem" in w.value for w in at.warning)  # the report names the broken file
    report = [d for d in at.dataframe if "broken.jpg" in d.value.to_string()]
    assert report, "the validation report does not list the corrupt file"
    # create a workspace from the upload
    name_box = [t for t in at.text_input if t.label == "Name"][0]
    name_box.set_value("my squares")
    [b for b in at.button if b.label == "Create workspace"][0].click()
    at.run()
    assert not at.exception
    ws = store.open_workspace("my-squares", root=demo_root)
    pairs = ws.pairs()
    assert sorted(p.caption for p in pairs) == ["a blue square", "a red square"]
    assert all(p.image.startswith("ws:") and ws.resolve(p.image).is_file() for p in pairs)
    assert len(ws.eval_items()) > 0


def test_bad_uploads_give_messages_not_tracebacks(demo_root):
    at = _open_data(run_ready(AppTest.from_file(APP, default_timeout=120)))
    # wrong CSV: no caption column
    shown = _upload(at, [("red.jpg", _jpeg((200, 0, 0)), "image/jpeg"),
                         ("captions.csv", b"file,text\nred.jpg,hello\n", "text/csv")])
    assert "Nothing could be loaded" in shown and "Create workspace" not in [b.label for b in at.button]
    # photos without any CSV
    shown = _upload(at, [("red.jpg", _jpeg((200, 0, 0)), "image/jpeg")])
    assert "add a CSV" in shown
    # a zip with odd paths: absolute, '..', and one good entry
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../evil.jpg", _jpeg((0, 0, 0)))
        z.writestr("/abs.jpg", _jpeg((0, 0, 0)))
        z.writestr("good.jpg", _jpeg((0, 200, 0)))
        z.writestr("captions.csv", "image,caption\ngood.jpg,a green square\n../evil.jpg,evil\n")
    shown = _upload(at, [("odd.zip", buf.getvalue(), "application/zip")])
    assert "a green square" in shown
    listed = " ".join(d.value.to_string() for d in at.dataframe)
    assert "evil.jpg" in listed and "abs.jpg" in listed
    # a decompression bomb: an image over the pixel limit
    big = io.BytesIO()
    Image.new("L", (12000, 6000), 0).save(big, format="PNG")
    shown = _upload(at, [("huge.png", big.getvalue(), "image/png"),
                         ("captions.csv", b"image,caption\nhuge.png,too big\n", "text/csv")])
    assert "Nothing could be loaded" in shown
    assert "pixel" in " ".join(d.value.to_string() for d in at.dataframe).lower()
    # a non-zip file named .zip
    shown = _upload(at, [("fake.zip", b"this is not a zip", "application/zip")])
    assert "Nothing could be loaded" in shown or "zip" in shown.lower()
    # nothing of the current workspace was lost
    assert [p.name for p in store.list_workspaces(demo_root)] == ["demo"]
    assert store.Workspace(store.list_workspaces(demo_root)[0]).counts()["pairs"] > 0


def test_folder_field_refuses_files_and_places_outside_the_allowed_roots(demo_root, tmp_path, monkeypatch):
    secret = "ROSETTA_APPTEST_SECRET_271828"
    monkeypatch.setenv("ROSETTA_TEST_SECRET", secret)  # in this process's /proc/self/environ
    allowed = tmp_path / "mine"
    (allowed / "set").mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 200, 10)).save(allowed / "set" / "g.jpg")
    (allowed / "set" / "captions.csv").write_text("image,caption\ng.jpg,a green thing\n")
    monkeypatch.setenv("ROSETTA_ALLOWED_ROOTS", str(allowed))
    at = _open_data(run_ready(AppTest.from_file(APP, default_timeout=120)))
    at.radio(key="byo_how").set_value("A folder on this computer").run()
    for path, why in (("/proc/self/environ", "allowed locations"), (str(allowed / "set" / "captions.csv"),
                                                                     "not a folder")):
        at.text_input(key="byo_path").set_value(path).run()
        assert not at.exception
        shown = texts(at)
        assert why in shown and secret not in shown
        assert "Create workspace" not in [b.label for b in at.button]
    at.text_input(key="byo_path").set_value(str(allowed / "set")).run()
    assert not at.exception and "a green thing" in texts(at)


def test_add_to_current_workspace_updates_the_sidebar(demo_root):
    at = _open_data(run_ready(AppTest.from_file(APP, default_timeout=120)))
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    n = ws.counts()["pairs"]
    csv = b"image,caption\nred.jpg,a red square\nblue.jpg,a blue square\n"
    shown = _upload(at, [("red.jpg", _jpeg((220, 20, 20)), "image/jpeg"),
                         ("blue.jpg", _jpeg((20, 20, 220)), "image/jpeg"),
                         ("captions.csv", csv, "text/csv")])
    assert "2 pairs from 2 photos" in shown
    [b for b in at.button if b.label == "Add to current workspace"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert ws.counts()["pairs"] == n + 2
    assert any("Added 2 pairs" in s.value for s in at.success)
    sidebar = " ".join(str(c.value) for c in at.sidebar.caption)
    assert f"{n + 2:,} anchor pairs" in sidebar, sidebar


def test_exports_are_built_on_request_and_match_the_log(demo_root):
    at = _open_data(run_ready(AppTest.from_file(APP, default_timeout=120)))
    assert not at.get("download_button"), "an export was built on a plain visit"
    [b for b in at.button if b.label.startswith("Prepare: Download the curated pairs")][0].click().run()
    assert not at.exception
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    assert len(at.get("download_button")) == 1
    assert "ready" in texts(at)
    # the Workspaces page: both exports on request, nothing built on a visit
    at.switch_page("pages/workspaces.py").run()
    labels = [b.label for b in at.button]
    assert "Prepare: Curated pairs (CSV)" in labels and "Prepare: Model file (.npz)" in labels
    assert not at.get("download_button")
    [b for b in at.button if b.label == "Prepare: Model file (.npz)"][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [d.label for d in at.get("download_button")] == ["Model file (.npz)"]
    assert f"{ws.counts()['pairs']:,} anchor pairs" in texts(at)  # the status line says what it wrote

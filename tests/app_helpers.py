"""Shared helpers for the AppTest and browser tests of the dashboard."""
from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
#: A small demo: the first 40 Flickr8k photos (~200 pairs) and 5 CIFAR-10 test pictures per class.
DEMO_IMAGES = 40
DEMO_PER_CLASS = 5


def small_env(monkeypatch, root: Path) -> None:
    monkeypatch.setenv("ROSETTA_WORKSPACES", str(root))
    monkeypatch.setenv("ROSETTA_DEMO_IMAGES", str(DEMO_IMAGES))
    monkeypatch.setenv("ROSETTA_DEMO_PER_CLASS", str(DEMO_PER_CLASS))


def run_ready(at, timeout: float = 240.0):
    """Run the app until the current workspace's model is built (no progress bar left)."""
    at.run()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if at.exception:
            raise AssertionError(f"app raised: {[e.value for e in at.exception]}")
        waiting = any("Preparing" in str(getattr(p, "proto", "")) for p in at.get("progress"))
        if not waiting and len(at.title):
            return at
        time.sleep(0.5)
        at.run()
    raise AssertionError("the model was not ready in time")


def rerun_until(at, ready, what: str, timeout: float = 240.0):
    """Rerun AppTest ``at`` until ``ready(at)`` (background work shown: the influence table, a
    search, a panel); fails on an app exception, or after ``timeout`` seconds saying ``what`` and
    the end of what the page showed."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert not at.exception, [e.value for e in at.exception]
        if ready(at):
            return at
        time.sleep(0.3)
        at.run()
    raise AssertionError(f"{what} was not ready in time; the page showed: {texts(at)[-500:]}")


def switch_and_wait(at, page: str, ready, timeout: float = 240.0):
    """Switch AppTest ``at`` to ``page`` and rerun it until ``ready(at)`` (:func:`rerun_until`)."""
    at.switch_page(page).run()
    return rerun_until(at, ready, page, timeout)


def open_curate(at):
    """Curate with its influence table shown (its pair selector is there)."""
    return switch_and_wait(at, "pages/curate.py",
                           lambda a: any(m.label.startswith("Selected pairs") for m in a.multiselect))


def texts(at) -> str:
    """Everything markdown/caption/success/info/error/warning shows, as one string."""
    parts = []
    for kind in ("markdown", "caption", "success", "info", "error", "warning", "subheader", "title"):
        parts += [str(e.value) for e in at.get(kind)]
    return "\n".join(parts)


# ------------------------------------------------------------------------------ a real server
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def open_page(playwright, width: int = 1400, height: int = 1400):
    """``(browser, page)``: Debian's chromium, headless, driven by Playwright. Actions and ``expect``
    wait up to 60 s (``expect``'s own default, 5 s, is too short on a busy 2-core CI machine)."""
    from playwright.sync_api import expect

    assert os.path.exists(CHROMIUM), "chromium is missing: apt-get install -y chromium (make test does)"
    expect.set_options(timeout=60_000)
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(60_000)
    return browser, page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workspaces: Path, log: Path, *, app_root: Path = ROOT, images: int = DEMO_IMAGES,
                 per_class: int = DEMO_PER_CLASS) -> subprocess.Popen:
    """``streamlit run app.py`` (of the checkout ``app_root``) on 127.0.0.1:port with a demo of
    ``images`` Flickr8k photos and ``per_class`` CIFAR-10 pictures; waits until healthy."""
    env = dict(os.environ, ROSETTA_WORKSPACES=str(workspaces), ROSETTA_DEMO_IMAGES=str(images),
               ROSETTA_DEMO_PER_CLASS=str(per_class))
    cmd = [sys.executable, "-m", "streamlit", "run", str(Path(app_root) / "app.py"), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true",
           "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal",
           "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=str(app_root), env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"streamlit exited early: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("streamlit did not become healthy in 90 s")


def stop_server(proc: subprocess.Popen, hard: bool = False) -> None:
    if proc.poll() is None:
        proc.kill() if hard else proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric_value(page, label: str) -> str:
    """The value of the st.metric whose label is ``label``."""
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()

"""Packaging: the editable wheel `pip install -e .` builds, the `rosetta` console script it declares,
and pyproject's dependencies against requirements.txt."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _subcommands(help_text: str) -> set[str]:
    """The ``{a,b,c}`` sub-command list of an argparse usage line."""
    return set(re.search(r"\{([a-z,-]+)\}", help_text).group(1).split(","))


def test_editable_wheel_declares_the_rosetta_command_and_points_at_the_source(tmp_path):
    from hatchling.builders.wheel import WheelBuilder  # the backend pip runs for `pip install -e .`

    wheel = Path(next(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["editable"])))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        pth = [z.read(n).decode().strip() for n in names if n.endswith(".pth")]
    assert "rosetta = core.cli:main" in entry_points
    assert pth == [str(ROOT)]


def test_rosetta_offers_every_python_m_core_command_plus_app(capsys):
    module, _, function = PYPROJECT["project"]["scripts"]["rosetta"].partition(":")
    main = getattr(importlib.import_module(module), function)
    try:
        main(["--help"])
    except SystemExit as done:
        assert done.code == 0
    rosetta = capsys.readouterr().out
    assert rosetta.startswith("usage: rosetta")
    python_m_core = subprocess.run([sys.executable, "-m", "core", "--help"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout
    assert {"embed", "info", "asif", "align", "invert"} <= _subcommands(python_m_core)
    assert _subcommands(rosetta) == _subcommands(python_m_core)
    assert "app" in _subcommands(rosetta)


def test_rosetta_app_runs_streamlit_on_app_py_with_the_extra_options():
    from core.cli import APP_SCRIPT, build_parser, streamlit_command

    assert APP_SCRIPT == ROOT / "app.py" and APP_SCRIPT.is_file()
    args, extra = build_parser().parse_known_args(["app", "--server.port", "8502"])
    assert args.command == "app"
    assert streamlit_command(extra) == [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
                                        "--server.port", "8502"]


def test_dependencies_mirror_requirements_txt():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pinned = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    project = PYPROJECT["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    assert declared == pinned

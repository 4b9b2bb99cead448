"""The command line: ``rosetta <command>`` (installed console script) or ``python -m core <command>``.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its sub-commands
and sets ``run=<function(args) -> int>`` as the parser default. ``rosetta app [streamlit options]``
starts the dashboard (``streamlit run app.py``), passing any further options to Streamlit.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

COMMAND_MODULES = (
    "core.cli.data",
    "core.cli.asif",
    "core.cli.invert",
    "core.cli.align",
)
#: The Streamlit entry script, in the source tree (``pip install -e .`` keeps it there).
APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"


def streamlit_command(streamlit_args: list[str]) -> list[str]:
    """The command ``rosetta app`` runs: this Python's Streamlit on :data:`APP_SCRIPT`.

    >>> streamlit_command(["--server.port", "8502"])[1:4] == ["-m", "streamlit", "run"]
    True
    """
    if not APP_SCRIPT.is_file():
        raise ValueError(f"the dashboard script {APP_SCRIPT} is missing: install Rosetta from its "
                         "source folder (pip install -e .) to run the app.")
    return [sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT), *streamlit_args]


def _run_app(args: argparse.Namespace) -> int:
    command = streamlit_command(args.streamlit_args)
    if os.name == "posix":
        os.execv(command[0], command)  # Streamlit replaces this process: signals reach it directly
    return subprocess.call(command)


def build_parser(prog: str = "rosetta") -> argparse.ArgumentParser:
    """The parser of every sub-command (``prog`` is the name shown in help and errors)."""
    parser = argparse.ArgumentParser(prog=prog, description="Rosetta command line.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    app = subparsers.add_parser("app", help="start the dashboard (streamlit run app.py); further "
                                            "options go to Streamlit, e.g. --server.port 8502")
    app.set_defaults(run=_run_app)
    return parser


def main(argv: list[str] | None = None, prog: str = "rosetta") -> int:
    """Run one command; a ``ValueError`` becomes a one-line ``error: …`` and exit status 2."""
    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    if args.command == "app":
        args.streamlit_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args) or 0)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


class ProgressBar:
    """A tqdm bar on stderr fed by ``progress(done, total)`` callbacks (silent when not ``enabled``)."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
        self.bar.total, self.bar.n = total, done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

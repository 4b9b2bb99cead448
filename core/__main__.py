"""``python -m core``: the command line (see :mod:`core.cli`; installed, it is the ``rosetta`` command)."""
from __future__ import annotations

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m core"))

"""Command-line front ends of `python -m core`: one module per command group, each with `register`."""

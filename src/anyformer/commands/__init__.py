"""Subcommands that live in their own module (``quantize``, ``prune``, ``import``, ...).

Each module of this package defines ``add_parser(sub) -> argparse.ArgumentParser``: it adds
one subcommand to the command line's subparsers (``sub.add_parser(NAME, ...)``), sets
``func`` to a function ``(args) -> int`` and returns the parser. The command line
(``cli.build_parser``) adds every module found here, in name order, so a new command is
one new file. Commands raise ``UserError`` subclasses for bad input (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any


def add_all(sub: Any) -> list[argparse.ArgumentParser]:
    """Add every command module's subcommand to ``sub``; returns their parsers."""
    parsers = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        parsers.append(module.add_parser(sub))
    return parsers

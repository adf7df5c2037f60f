"""Command-line options made from configuration fields (see :func:`aiayn.config.option`), so that each
option's default and help text are written once, beside the field, and the CLI only lists which fields
a command takes."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields
from typing import Any, Literal


def flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser, cls: type, names: list[str] | None = None) -> None:
    """Add ``--field-name`` for each field of ``cls`` that has help text (or those in ``names``)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if "help" not in f.metadata or (names is not None and f.name not in names):
            continue
        hint, kw = hints[f.name], {"dest": f.name, "help": f.metadata["help"]}
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if f.default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        if hint is bool:
            parser.add_argument(flag(f), action="store_true", **kw)
            continue
        if typing.get_origin(hint) is Literal:
            kw["choices"] = list(typing.get_args(hint))
        else:
            kw["type"] = args[0] if args else hint  # int | None → int
            kw["metavar"] = flag(f)[2:].replace("-", "_").upper()
        if f.default is not MISSING and f.default is not None:
            kw["help"] += f" (default {f.default:g})" if isinstance(f.default, float) else f" (default {f.default})"
        parser.add_argument(flag(f), **kw)


def options_from(cls: type, a: argparse.Namespace, **fixed: Any):
    """Build ``cls`` from the parsed options that :func:`add_options` added (plus ``fixed`` values)."""
    given = {f.name: getattr(a, f.name) for f in fields(cls) if "help" in f.metadata and hasattr(a, f.name)}
    return cls(**{**given, **fixed})

"""One typed config per command: a dataclass whose fields declare their own flags.

A field made with :func:`flag` carries its command-line spelling, help and checking
``type`` beside its one default; :func:`add_flags` puts those fields on an argparse parser
and :func:`from_args` builds the dataclass from what was parsed, so a default, a range
check or a help text is written once, and no command copies parsed values field by field.

A small helper of our own rather than a library that builds argparse from dataclasses
(simple-parsing, tyro, ...): none is installed, the project's parser (one-line errors,
defaults in ``--help``, :mod:`atari_trtis_demo.core.cli_args`) must stay, and the 2019
flag spellings (``--rendering_scale``, ``--modelpath``) need explicit names anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

_FLAG = "atari_trtis_demo.flag"
T = TypeVar("T")


@dataclass(frozen=True)
class Flag:
    """How one field appears on the command line: its spellings and argparse's other arguments."""

    names: tuple[str, ...]
    options: dict[str, Any]
    unset: Any = dataclasses.MISSING


def flag(
    default: Any = dataclasses.MISSING, *names: str, help: str, unset: Any = dataclasses.MISSING, **options: Any
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``names`` default to ``--field-name`` (underscores as dashes); give them for other
    spellings (the 2019 ``--rendering_scale``). ``options`` go to ``add_argument``
    (``type``, ``action``, ``metavar``...). Without ``default`` the flag is required.
    ``unset`` is the parsed value when the flag is not given, where that differs from the
    field's default (``--env``: None, "the model's own game", which the command resolves).
    """
    spec = Flag(names, {"help": help, **options}, unset)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={_FLAG: spec})
    return dataclasses.field(default=default, metadata={_FLAG: spec})


def flag_fields(cls: type, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags, in declaration order, less those named in ``skip``."""
    skipped = set(skip)
    return [f for f in dataclasses.fields(cls) if _FLAG in f.metadata and f.name not in skipped]


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, *, skip: Iterable[str] = ()) -> None:
    """Add every flag field of ``cls`` (but ``skip``) to ``parser`` (or an argument group), dest = the field."""
    for f in flag_fields(cls, skip):
        spec: Flag = f.metadata[_FLAG]
        names = spec.names or ("--" + f.name.replace("_", "-"),)
        options = dict(spec.options)
        if options.get("action") not in ("store_true", "store_false") and "choices" not in options:
            # Named after the flag, not the field: "--env ENV", not "--env ENV_ID" (choices show themselves).
            options.setdefault("metavar", names[0].lstrip("-").replace("-", "_").upper())
        if spec.unset is not dataclasses.MISSING:
            options["default"] = spec.unset
        elif f.default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = f.default
        parser.add_argument(*names, dest=f.name, **options)


def from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """``cls`` built from the parsed ``args`` (every field that has a parsed value), ``values`` on top."""
    parsed = vars(args)
    found = {f.name: parsed[f.name] for f in dataclasses.fields(cls) if f.init and f.name in parsed}
    return cls(**{**found, **values})  # type: ignore[call-arg]

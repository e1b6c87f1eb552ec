"""The ``sccan`` command: a thin shell over the packages' APIs.

Each package contributes its subcommands through the ``sccan.commands`` entry-point group
(a ``register(subparsers)`` function that adds a parser whose default ``func`` runs it), so this
dispatcher imports nothing of ``sccan.train`` or ``sccan.export`` by name and stays torch-free.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from .errors import SCCANError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sccan", description="SCCAN Edge: few-shot segmentation "
                                     "from PyTorch to TensorRT, with a runtime SDK.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="sccan.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # an optional part (train/export) whose dependencies are absent
            p = sub.add_parser(ep.name, help=f"unavailable here: {exc}")
            p.set_defaults(func=lambda args, exc=exc, name=ep.name: _unavailable(name, exc))
            continue
        register(sub)
    return parser


def _unavailable(name: str, exc: ImportError) -> int:
    print(f"sccan {name} needs packages that are not installed ({exc}); "
          "pip install 'sccan[train,export]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SCCANError as exc:
        print(f"sccan {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``sccan`` command: a thin shell over the packages' APIs.

Each package contributes its subcommands through the ``sccan.commands`` entry-point group
(a ``register(subparsers)`` function that adds a parser whose default ``func`` runs it), so this
dispatcher imports nothing of ``sccan.train`` or ``sccan.export`` by name and stays torch-free.
Entry points are loaded lazily: ``sccan segment ...`` loads only the ``segment`` entry point, so
commands of the SDK never import torch; only ``sccan`` and ``sccan --help`` load them all.

User errors (an :class:`SCCANError`, a bad option) end with exit code 2 and one line on stderr,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from importlib.metadata import entry_points

from .errors import SCCANError


def _quiet_libraries() -> None:
    """Keep third-party chatter off the terminal: OpenCV's decoder warnings (a folder run reports
    unreadable files itself) and torchvision's import-time warnings."""
    try:
        import cv2.utils.logging as cv_logging

        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_SILENT)
    except (ImportError, AttributeError):
        pass
    warnings.filterwarnings("ignore", module=r"torchvision(\..*)?")
    warnings.filterwarnings("ignore", message=r".*torchvision.*")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that subcommand's entry point is loaded."""
    parser = argparse.ArgumentParser(prog="sccan", description="SCCAN Edge: few-shot segmentation "
                                     "from PyTorch to TensorRT, with a runtime SDK.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="sccan.commands"), key=lambda e: e.name):
        if only is not None and ep.name != only:
            continue
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
    argv = sys.argv[1:] if argv is None else list(argv)
    _quiet_libraries()
    names = {ep.name for ep in entry_points(group="sccan.commands")}
    command = argv[0] if argv and argv[0] in names else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SCCANError as exc:
        print(f"sccan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sccan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

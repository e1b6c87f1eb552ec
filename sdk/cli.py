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


#: The extra each command of an optional part needs (``pip install 'sccan[EXTRA]'``); the SDK's own
#: commands (info, bench, segment) need none.
EXTRAS = {"export": "export", "quantize": "export", "build": "tensorrt", "demo": "train,export", "train": "train",
          "eval": "train", "triton": "serve", "serve": "serve", "app": "app"}


#: Modules each command of an extra imports when it runs (found, not imported, to say early what is missing).
REQUIRES = {"export": ("torch", "onnx"), "quantize": ("onnx",), "build": ("onnx",), "demo": ("torch", "onnx"),
            "train": ("torch",), "eval": ("torch",), "app": ("fastapi", "uvicorn")}


def _absent(name: str) -> ImportError | None:
    """The ImportError a command would meet first (a module of its extra that is not installed), or None."""
    import importlib.util

    for module in REQUIRES.get(name, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return ModuleNotFoundError(f"No module named {module!r}", name=module)
    return None


def _missing_extra(name: str, exc: ImportError) -> int:
    """One line naming the extra a command needs, exit 2."""
    extra = EXTRAS.get(name, "train,export")
    missing = getattr(exc, "name", None) or str(exc)
    print(f"sccan {name}: needs the '{extra}' extra ({missing} is not installed): pip install -e '.[{extra}]' "
          f"in a checkout, or pip install 'sccan[{extra}]'", file=sys.stderr)
    return 2


def _third_party(exc: ImportError) -> bool:
    """A missing dependency (not a fault of this package's own modules)."""
    name = getattr(exc, "name", None) or ""
    return isinstance(exc, ModuleNotFoundError) and bool(name) and not name.startswith("sccan")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that subcommand's entry point is loaded."""
    parser = argparse.ArgumentParser(prog="sccan", description="SCCAN Edge: few-shot segmentation "
                                     "from PyTorch to TensorRT, with a runtime SDK.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="sccan.commands"), key=lambda e: e.name):
        if only is not None and ep.name != only:
            continue
        try:
            absent = _absent(ep.name)
            if absent is not None:
                raise absent
            register = ep.load()
        except ImportError as exc:  # an optional part (train/export) whose dependencies are absent
            p = sub.add_parser(ep.name, help=f"needs the '{EXTRAS.get(ep.name, 'train,export')}' extra "
                                             f"({getattr(exc, 'name', None) or exc} is not installed)")
            p.set_defaults(func=lambda args, exc=exc, name=ep.name: _missing_extra(name, exc))
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _quiet_libraries()
    names = {ep.name for ep in entry_points(group="sccan.commands")}
    command = argv[0] if argv and argv[0] in names else None
    if command is not None:
        # A command of a part whose extra is not installed says so whatever its arguments (argparse
        # would otherwise refuse them first, as unrecognised).
        ep = next(e for e in entry_points(group="sccan.commands") if e.name == command)
        try:
            absent = _absent(command)
            if absent is not None:
                raise absent
            ep.load()
        except ImportError as exc:
            return _missing_extra(command, exc)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ImportError as exc:
        if not _third_party(exc):
            raise
        return _missing_extra(args.command, exc)
    except SCCANError as exc:
        print(f"sccan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sccan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

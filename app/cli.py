"""``sccan app BUNDLE``: the command, a thin shell over :mod:`sccan.app.server`."""

from __future__ import annotations

import argparse
import signal
import sys

from sccan.sdk.net import is_loopback
from sccan.sdk.segment_cli import add_runtime_options

DEFAULT_PORT = 8765


def _after_shutdown(signum: int, frame: object) -> None:
    """The stop signal, raised again by uvicorn after its graceful shutdown: already handled."""


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from sccan.sdk.segmenter import Segmenter

    from .live import LiveSession
    from .server import create_app

    segmenter = Segmenter(args.bundle, backend=args.backend, threads=args.threads, precision=args.precision)
    if args.load_support:
        segmenter.load_support(args.load_support)
    session = LiveSession(segmenter, args.source, threshold=args.threshold,
                          presence_threshold=args.presence_threshold)
    if not is_loopback(args.host):
        print(f"sccan app: warning: listening on {args.host}, reachable from other computers; the app has no "
              "login: anyone who reaches it can see the camera and register classes", file=sys.stderr)
    app = create_app(session, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)  # SIGINT / SIGTERM end it gracefully (uvicorn's own handlers)
    # uvicorn raises the signal it stopped on again once it has shut down, under the handler found
    # before it started: this one lets the app close its source and exit 0 instead of dying by it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _after_shutdown)
    session.start()
    print(f"sccan app: http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/ "
          f"(backend {segmenter.backend.name}, {segmenter.backend.precision}; Ctrl-C stops)", flush=True)
    try:
        server.run()
    finally:
        session.close()
    print("sccan app: stopped", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="a local web page: register objects with a box or clicks, watch live overlays",
                       description="Serve a page to try a bundle live: a camera, video, image folder or uploaded "
                                   "images; pause, drag a box or click on an object, register it, and watch the "
                                   "overlays with presence, per-stage timings and FPS.")
    p.add_argument("bundle", help="bundle directory from `sccan export`")
    p.add_argument("--source", help="camera index (0), video file, image folder, or a URI `sccan segment --input` "
                                    "takes; without it, upload images in the page")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this computer only; any other warns)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    add_runtime_options(p)
    p.add_argument("--threshold", type=float, default=0.5, help="mask threshold (default 0.5)")
    p.add_argument("--presence-threshold", type=float, default=None,
                   help="presence below which a class is shown absent (default: the bundle's)")
    p.add_argument("--load-support", metavar="FILE", help="start with the classes of a support file")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest upload or support file (default 16)")
    p.set_defaults(func=run)

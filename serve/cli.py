"""``sccan triton`` and ``sccan serve``: command-line shells over :mod:`sccan.serve`."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .repository import BACKENDS, make_repository


def run_triton(args: argparse.Namespace) -> int:
    repo = make_repository(args.bundle, args.output, backend=args.backend, instances=args.instances,
                          max_batch=args.max_batch, support_dir=args.support_dir, precision=args.precision,
                          threads=args.threads, force=args.force)
    graphs = "" if args.backend == "onnxruntime" else \
        f", graphs as models sccan_backbone/support_encoder/query_decoder ({args.backend}) called through BLS"
    print(f"Triton model repository written to {repo} (model 'sccan', {args.instances} instance(s){graphs}); "
          f"start it with: sccan serve {repo}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from sccan.sdk.net import is_loopback

    from .server import TritonServer

    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, log=args.log,
                          verbose=args.verbose, python=args.python, address=args.address,
                          token_file=args.token_file)
    if not is_loopback(args.address):
        print(f"sccan serve: warning: listening on {args.address}: anyone who reaches this machine can segment"
              + (" (registering and removing classes needs the token)" if server.token else
                 ", and register, replace and remove classes: pass --token-file to require a token for those"),
              file=sys.stderr, flush=True)

    class Terminated(Exception):
        pass

    def on_term(*_: object) -> None:  # Kubernetes' stop: leave the loop below, which stops the server
        raise Terminated

    server.start()
    print(f"tritonserver ({server.origin}) starting on {args.repo}; log: {server.log}", flush=True)
    signal.signal(signal.SIGTERM, on_term)
    try:
        server.wait_ready()
        print(f"ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics "
              f"http://{server.http_url.rsplit(':', 1)[0]}:{args.metrics_port}/metrics (Ctrl-C stops)", flush=True)
        # Polled, not a blocking wait: a signal handler must never interrupt the reaping of the
        # process (a second wait on it from the handler deadlocks on Popen's lock).
        while server.process.poll() is None:
            time.sleep(0.2)
        return server.process.returncode
    except Terminated:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        server.stop()


def register_triton(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("triton", help="a Triton Inference Server model repository serving a bundle",
                       description="Write a Triton model repository whose Python-backend model serves the bundle "
                                   "through the Segmenter (register, remove and list classes; segment frames).")
    p.add_argument("bundle", help="model bundle directory (from `sccan export`)")
    p.add_argument("-o", "--output", required=True, help="repository directory to write")
    p.add_argument("--backend", default="onnxruntime", choices=BACKENDS,
                   help="onnxruntime (default): the Segmenter on ONNX Runtime in the Python model; tensorrt: the "
                        "bundle's engines as tensorrt_plan models on GPU instances, called through BLS; "
                        "onnxruntime-bls: that layout with ONNX Runtime models (CPU)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--max-batch", type=int, default=4,
                   help="most same-size frames the dynamic batcher gives one execution (default 4)")
    p.add_argument("--support-dir", default=None,
                   help="where registered classes are kept (default REPO/sccan/supports; shared storage for replicas)")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16"), help="graph precision (backend default)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per instance")
    p.add_argument("--force", action="store_true", help="replace an existing repository (its supports are kept)")
    p.set_defaults(func=run_triton)


def register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start tritonserver on a repository made by `sccan triton`",
                       description="Start tritonserver (from PATH, or from the nvidia-pytriton wheel) on the "
                                   "repository, with its Python backend running this environment.")
    p.add_argument("repo", help="model repository (from `sccan triton`)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--address", default="127.0.0.1",
                   help="where the HTTP, gRPC and metrics endpoints listen (default 127.0.0.1, this machine only; "
                        "0.0.0.0 for every interface, with a warning: pair it with --token-file)")
    p.add_argument("--token-file", default=None,
                   help="a file whose first line is a secret token: registering, replacing and removing classes "
                        "then need it (RemoteSegmenter(..., token=...)); Triton's admin APIs take it as their key")
    p.add_argument("--log", default=None, help="server log file (default beside the repository)")
    p.add_argument("--verbose", action="store_true", help="verbose server log")
    p.add_argument("--python", default=None,
                   help="the Python whose environment runs the model (default this one); with nvidia-pytriton's "
                        "server it must have numpy<2: pip install 'sccan[serve]' in its own venv")
    p.set_defaults(func=run_serve)

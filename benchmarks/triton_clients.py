"""Throughput of a Triton-served bundle: 1 client against N concurrent clients, in one run.

    python benchmarks/triton_clients.py BUNDLE [--clients 4] [--frames 16] [--instances 2] [--threads 1]
        [--frame 640x480] [--python .venv-serve/bin/python]

Makes a repository in a temporary directory, starts tritonserver on free ports, registers one class
(1 shot), then times --frames frames from one client, and --frames frames from each of --clients
clients at once (HTTP, each its own connection). Prints frames per second for both, their ratio,
and how many frames the server ran per backbone batch. The server and the clients share this
machine's cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from sccan.sdk.bench import synthetic_scene
from sccan.serve import make_repository
from sccan.serve.remote import RemoteSegmenter
from sccan.serve.server import TritonServer, free_ports


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frame", default="640x480")
    p.add_argument("--python", default=None, help="serving environment's Python (numpy<2, sccan[serve])")
    args = p.parse_args()
    width, height = (int(v) for v in args.frame.split("x"))
    frame, _ = synthetic_scene(0, height, width)
    example, mask = synthetic_scene(1, height, width)
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repository(args.bundle, Path(tmp) / "repo", instances=args.instances, threads=args.threads)
        with TritonServer(repo, *free_ports(3), python=args.python) as server:
            seg = RemoteSegmenter(server.http_url)
            seg.add_class("object", [example], [mask])
            for _ in range(3):
                seg.segment(frame, output="masks")  # warm-up
            start = time.perf_counter()
            for _ in range(args.frames):
                seg.segment(frame, output="masks")
            one = args.frames / (time.perf_counter() - start)
            batches: list[float] = []

            def client() -> None:
                remote = RemoteSegmenter(server.http_url)
                for _ in range(args.frames):
                    batches.append(remote.segment(frame, output="masks").timings.get("frames", 1.0))

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            many = args.clients * args.frames / (time.perf_counter() - start)
    report = {"bundle": args.bundle, "frame": args.frame, "instances": args.instances, "threads": args.threads,
              "frames_per_client": args.frames, "fps_1_client": round(one, 2),
              f"fps_{args.clients}_clients": round(many, 2), "ratio": round(many / one, 2),
              "mean_frames_per_backbone_batch": round(sum(batches) / len(batches), 2)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

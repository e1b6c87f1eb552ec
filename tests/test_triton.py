"""Serving through a real Triton Inference Server (``tritonserver`` from the nvidia-pytriton wheel,
in a serving environment with numpy<2; ``bash .ci/run`` makes one and points SCCAN_SERVE_PYTHON at
it). Skipped with the reason elsewhere, except in CI, where a missing server is a failure."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from conftest import scene

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'sccan[dev]')")

from sccan.sdk import Segmenter  # noqa: E402
from sccan.sdk.errors import (BadArgumentError, BadImageError, CorruptCacheError, EmptyMaskError,  # noqa: E402
                              UnknownClassError)
from sccan.serve import make_repository  # noqa: E402
from sccan.serve.remote import RemoteSegmenter  # noqa: E402
from sccan.serve.server import ServerError, TritonServer, find_tritonserver, free_ports  # noqa: E402

SERVE_PYTHON = os.environ.get("SCCAN_SERVE_PYTHON") or sys.executable


def _serving_environment() -> str | None:
    try:
        find_tritonserver(SERVE_PYTHON)
    except ServerError as exc:
        return str(exc)
    return None


_why = _serving_environment()
if _why and os.environ.get("CI") == "true":
    raise RuntimeError(f"CI must run the Triton tests (.ci/run makes the serving environment): {_why}")
pytestmark = [pytest.mark.serve, pytest.mark.skipif(_why is not None, reason=f"no Triton server here: {_why}")]


def register(seg) -> None:
    image, mask = scene(0)
    seg.add_class("cup", [image], [mask])
    shots = [scene(1), scene(2, 40, 90)]
    seg.add_class("rocket", [s[0] for s in shots], [s[1] for s in shots])


def assert_same(got, want, tol: float = 1e-5) -> None:
    assert got.classes == want.classes
    for name in want.classes:
        np.testing.assert_allclose(got.probabilities[name], want.probabilities[name], atol=tol)
    assert np.array_equal(got.label_map, want.label_map)


def test_served_segmenter_equals_in_process_and_survives_a_restart(small_export, tmp_path):
    _, bundle = small_export
    repo = make_repository(bundle, tmp_path / "repo", instances=2, max_batch=4)
    local = Segmenter(bundle)
    register(local)
    frames = [scene(100 + i)[0] for i in range(6)] + [scene(200, 61, 37)[0], scene(201, 45, 90)[0]]
    wants = [local.segment(f) for f in frames]
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http, grpc, metrics, python=SERVE_PYTHON) as server:
        remote = RemoteSegmenter(server.http_url)
        assert remote.classes == []
        register(remote)
        assert remote.classes == ["cup", "rocket"]
        assert sorted(p.name for p in (repo / "sccan" / "supports").iterdir()) == ["cup.npz", "rocket.npz"]
        # four concurrent clients (two over HTTP, two over gRPC), every frame, in-process results
        results: dict[int, list] = {}
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                seg = RemoteSegmenter(server.http_url) if k % 2 == 0 else RemoteSegmenter(server.grpc_url, "grpc")
                results[k] = [seg.segment(f) for f in frames]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for got in results.values():
            for g, w in zip(got, wants):
                assert_same(g, w)
        only = remote.segment(frames[0], classes=["rocket"], threshold=0.3, output="masks")
        assert only.classes == ["rocket"] and np.array_equal(only.masks["rocket"],
                                                             local.segment(frames[0], "rocket").probabilities[
                                                                 "rocket"] > 0.3)
        # clear errors, with the server still serving afterwards
        with pytest.raises(UnknownClassError, match="unknown class.*'bottle'"):
            remote.segment(frames[0], classes=["bottle"])
        with pytest.raises(BadImageError, match="8-bit"):
            remote.segment(frames[0].astype(np.float32))
        image, _ = scene(3)
        speck = np.zeros(image.shape[:2], np.uint8)
        speck[5, 5] = 255
        with pytest.raises(EmptyMaskError, match="covers 1 of"):  # judged by the server's Segmenter
            remote.add_class("speck", [image], [speck])
        corrupt = tmp_path / "corrupt.npz"
        corrupt.write_bytes(b"PK\x03\x04 not really a zip")
        with pytest.raises(CorruptCacheError, match="not an SCCAN support file"):
            remote.load_support(corrupt)
        with pytest.raises(UnknownClassError):
            remote.remove_class("bottle")
        assert remote.classes == ["cup", "rocket"]
        assert_same(remote.segment(frames[1]), wants[1])
        # RGB frames and supports, as the SDK takes them
        assert_same(remote.segment(np.ascontiguousarray(frames[5][..., ::-1]), color="rgb"), wants[5])
        image, mask = scene(0)
        remote.add_class("cup", [np.ascontiguousarray(image[..., ::-1])], [mask], color="rgb")
        assert_same(remote.segment(frames[6]), wants[6])  # the same class as registered from BGR
        # a box instead of a mask (the server makes the mask), and clicks (the client makes it)
        from test_prompts import photo

        disc, _ = photo()
        local.add_class("disc", [disc], boxes=[(55, 25, 125, 95)])
        remote.add_class("disc", [disc], boxes=[(55, 25, 125, 95)])
        assert_same(remote.segment(frames[0], classes=["disc"]), local.segment(frames[0], classes=["disc"]))
        np.testing.assert_array_equal(remote.mask_from_prompt(disc, points=[(90, 60)]),
                                      local.mask_from_prompt(disc, points=[(90, 60)]))
        local.add_class("disc", [disc], points=[[(90, 60)]])
        remote.add_class("disc", [disc], points=[[(90, 60)]])
        assert_same(remote.segment(frames[0], classes=["disc"]), local.segment(frames[0], classes=["disc"]))
        for bad in ((0, 0, 0, 10), (10, 10, 500, 40), (40, 10, 10, 40)):  # zero area, outside, reversed
            with pytest.raises(BadArgumentError):
                remote.add_class("bad", [disc], boxes=[bad])
        with pytest.raises(BadArgumentError, match="not both"):
            remote.add_class("bad", [disc], [np.ones(disc.shape[:2], np.uint8)], boxes=[(55, 25, 125, 95)])
        remote.remove_class("disc")
        local.remove_class("disc")
        assert "bad" not in remote.classes
        saved = remote.save_support(tmp_path / "fleet.npz")
        # the sample, as a user runs it
        import subprocess
        from pathlib import Path

        import cv2

        root = Path(__file__).resolve().parents[1]
        example, mask = scene(7)
        for name, data in (("example.png", example), ("mask.png", mask), ("query.png", frames[0])):
            cv2.imwrite(str(tmp_path / name), data)
        run = subprocess.run([sys.executable, str(root / "samples" / "triton_client.py"), server.http_url,
                              *(str(tmp_path / n) for n in ("example.png", "mask.png", "query.png", "out.png"))],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "classes on the server: ['cup', 'object', 'rocket']" in run.stdout
        assert cv2.imread(str(tmp_path / "out.png")).shape == frames[0].shape
        remote.remove_class("object")
    fresh = Segmenter(bundle)
    assert fresh.load_support(saved) == ["cup", "rocket"]  # the server's file works in process
    assert_same(fresh.segment(frames[2]), wants[2])
    # a restarted server has its classes (support files), and removing one removes its file
    with TritonServer(repo, http, grpc, metrics, python=SERVE_PYTHON) as server:
        remote = RemoteSegmenter(server.grpc_url, protocol="grpc")
        assert remote.classes == ["cup", "rocket"]
        assert_same(remote.segment(frames[3]), wants[3])
        remote.remove_class("cup")
        assert remote.classes == ["rocket"] and not (repo / "sccan" / "supports" / "cup.npz").exists()
        assert remote.load_support(saved) == ["cup", "rocket"]
        assert_same(remote.segment(frames[4]), wants[4])


def test_graphs_as_models_called_through_bls(small_export, tmp_path):
    """The BLS layout of `--backend tensorrt`, with the graphs as ONNX Runtime models (CPU): the
    Python model's Segmenter runs each graph as a request to the model sccan_<graph>."""
    _, bundle = small_export
    repo = make_repository(bundle, tmp_path / "repo", backend="onnxruntime-bls")
    assert sorted(p.name for p in repo.iterdir()) == ["sccan", "sccan_backbone", "sccan_query_decoder",
                                                     "sccan_support_encoder"]
    local = Segmenter(bundle)
    register(local)
    frames = [scene(300 + i)[0] for i in range(3)]
    with TritonServer(repo, *free_ports(3), python=SERVE_PYTHON) as server:
        remote = RemoteSegmenter(server.http_url)
        register(remote)
        for frame in frames:
            assert_same(remote.segment(frame), local.segment(frame))
        with pytest.raises(UnknownClassError):
            remote.segment(frames[0], classes=["bottle"])



#: 127.0.0.1 as /proc/net/tcp writes it, and as tcp6 writes ::ffff:127.0.0.1 and ::1
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _listening(port: int) -> set[str]:
    """The local addresses a TCP port listens on (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                found.add(address)
    return found


def _left_behind(repo) -> list[str]:
    """Processes whose command line names the repository (tritonserver, its Python-backend stubs)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if str(repo) in cmd and "pytest" not in cmd:
            out.append(f"{pid}: {cmd[:120]}")
    return out


def test_server_listens_on_loopback_and_guards_class_changes_with_a_token(small_export, tmp_path):
    from sccan.sdk.errors import UnauthorizedError

    _, bundle = small_export
    repo = make_repository(bundle, tmp_path / "repo")
    token = tmp_path / "token"
    token.write_text("s3cret-token-of-the-robot-fleet\n")
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http, grpc, metrics, python=SERVE_PYTHON, token_file=token) as server:
        for port in (http, grpc, metrics):  # 127.0.0.1 (or IPv6's mapped form of it), never 0.0.0.0 or ::
            assert _listening(port) and _listening(port) <= LOOPBACK, (port, _listening(port))
        image, mask = scene(0)
        anonymous = RemoteSegmenter(server.http_url)
        with pytest.raises(UnauthorizedError, match="had none"):
            anonymous.add_class("cup", [image], [mask])
        with pytest.raises(UnauthorizedError, match="wrong"):
            RemoteSegmenter(server.grpc_url, "grpc", token="not-the-token-at-all").add_class("cup", [image], [mask])
        owner = RemoteSegmenter(server.grpc_url, "grpc", token_file=token)
        owner.add_class("cup", [image], [mask])
        assert anonymous.classes == ["cup"]  # reading and segmenting need no token
        result = anonymous.segment(scene(1)[0])
        assert set(result.presence) == {"cup"} and 0.0 <= result.presence["cup"] <= 1.0
        for saved in (tmp_path / "x.npz",):
            anonymous.save_support(saved)
            with pytest.raises(UnauthorizedError):
                anonymous.load_support(saved)
        with pytest.raises(UnauthorizedError):
            anonymous.remove_class("cup")
        assert anonymous.classes == ["cup"]  # refused requests changed nothing
        # Triton's model control is restricted to the key: refused without it.
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(request, timeout=10)
        owner.remove_class("cup")
        assert anonymous.classes == []


def test_sccan_serve_stops_within_5_s_of_sigterm_and_leaves_no_process(small_export, tmp_path):
    import signal
    import subprocess
    import time

    _, bundle = small_export
    repo = make_repository(bundle, tmp_path / "repo")
    token = tmp_path / "token"
    token.write_text("another-token-for-the-serve-test\n")
    http, grpc, metrics = free_ports(3)
    cli = subprocess.Popen([sys.executable, "-m", "sccan.sdk.cli", "serve", str(repo), "--python", SERVE_PYTHON,
                            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                            "--address", "0.0.0.0", "--token-file", str(token)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        for line in cli.stdout:
            if line.startswith("ready") or time.monotonic() > deadline:
                break
        assert line.startswith("ready"), cli.stderr.read()[-2000:]
        assert _listening(http) & {"00000000", "00000000000000000000000000000000"}  # every interface, as asked
        RemoteSegmenter(f"127.0.0.1:{http}").classes  # it serves
        started = time.monotonic()
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(30)
        took = time.monotonic() - started
        warning = cli.stderr.read()
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    print(f"sccan serve stopped {took:.1f} s after SIGTERM")
    assert code == 0 and took <= 5.0, (code, took)
    assert not _left_behind(repo), _left_behind(repo)
    assert "warning: listening on 0.0.0.0" in warning and "needs the token" in warning

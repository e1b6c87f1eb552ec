"""``sccan serve``: ``tritonserver`` on a model repository, with its Python backend pointed at this
environment.

The model runs in a Python environment (``python``, default this interpreter) that has sccan and
its runtime dependencies. The binary is the one on PATH (NVIDIA's Triton containers put it there,
with its backends in ``/opt/tritonserver/backends``), else the one inside that environment's
``nvidia-pytriton`` wheel (``pip install 'sccan[serve]'``). For the wheel's server a runtime
directory is prepared once per Python version: the server and its backends, with the Python-backend
stub for that Python. The stub runs the model in the Python found first on PATH, so the
environment's ``bin`` goes first.

The wheel's Python backend is built against numpy 1.x: under numpy 2 it reads and writes tensors
wrongly (seen here: an input [1, 2, 3] arrived as [1, 1, 1], strings failed to decode), which is
why the wheel pins numpy<2. The server refuses to start on such an environment.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sccan.sdk.errors import SCCANError

from .protocol import TOKEN_ENV

INSTALL_HINT = ("run inside NVIDIA's Triton container (tritonserver on PATH), or make a serving environment: "
                "python3 -m venv .venv-serve && .venv-serve/bin/pip install 'sccan[serve]' (its nvidia-pytriton "
                "wheel has tritonserver; it needs numpy<2, so keep it apart from numpy 2 environments) and pass "
                "--python .venv-serve/bin/python")
_PROBE = ("import importlib.util, json, numpy\n"
          "spec = importlib.util.find_spec('pytriton')\n"
          "import sccan.serve\n"
          "print(json.dumps({'pytriton': spec.origin if spec else None, 'numpy': numpy.__version__}))")


class ServerError(SCCANError):
    """tritonserver could not be found, started, or did not become ready."""


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on loopback now (for a server started right after: tests, benchmarks)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sccan" / "tritonserver"


def probe_environment(python: str) -> dict[str, str | None]:
    """Where the environment of ``python`` has pytriton, and its numpy version (it must import sccan)."""
    import json

    run = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise ServerError(f"{python} cannot run the model: {run.stderr.strip().splitlines()[-1:] or run.returncode} "
                          f"(it needs sccan, numpy and the SDK's dependencies): {INSTALL_HINT}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def find_tritonserver(python: str | None = None) -> tuple[Path, Path, list[Path], str]:
    """(binary, backend directory, extra library directories, where it came from) for a model
    running in the environment of ``python`` (default this interpreter)."""
    python = python or sys.executable
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        for backends in (binary.parent.parent / "backends", Path("/opt/tritonserver/backends")):
            if (backends / "python").is_dir():
                return binary, backends, [], f"{binary} (PATH)"
    env = probe_environment(python)
    if not env["pytriton"]:
        raise ServerError(f"no tritonserver found for {python}: {INSTALL_HINT}")
    if int(str(env["numpy"]).split(".")[0]) >= 2:
        raise ServerError(f"the environment of {python} has numpy {env['numpy']}, and the Python backend of "
                          f"nvidia-pytriton's tritonserver is built for numpy 1.x (it would corrupt tensors): "
                          f"{INSTALL_HINT}")
    root = Path(env["pytriton"]).parent / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (root / "bin" / "tritonserver").is_file() or not stub.is_file():
        raise ServerError(f"the nvidia-pytriton wheel at {root.parent} has no tritonserver for Python {version}: "
                          f"{INSTALL_HINT}")
    runtime = _cache_dir() / f"py{version}-{int((root / 'bin' / 'tritonserver').stat().st_mtime)}"
    if not (runtime / "backends" / "python" / "triton_python_backend_stub").is_file():
        tmp = runtime.with_name(f".{runtime.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root, tmp, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
        shutil.rmtree(runtime, ignore_errors=True)
        runtime.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, runtime)
    return runtime / "bin" / "tritonserver", runtime / "backends", [libs], f"nvidia-pytriton ({root.parent})"


#: Seconds tritonserver waits for in-flight requests when told to stop (its default is 30, over
#: Kubernetes' default grace period); then the process group is killed.
EXIT_TIMEOUT_S = 2
#: Triton's APIs that nobody needs to reach from the network: loading and unloading models, shared
#: memory, tracing, logging settings. They need the admin key (the token, or a random key).
RESTRICTED_HTTP = "model-repository,shared-memory,trace,logging"
RESTRICTED_GRPC = "model-repository,shared-memory,trace,logging"
ADMIN_HEADER = "sccan-admin-key"


class TritonServer:
    """A ``tritonserver`` process on ``repo``: ``start()``, ``wait_ready()``, ``stop()``; a context
    manager that does all three. Logs go to ``log`` (default ``REPO/../<repo>.tritonserver.log``).

    ``address`` is where its HTTP, gRPC and metrics endpoints listen (loopback by default; anyone
    who reaches them may segment, and, without a token, register and remove classes). With
    ``token_file``, the commands that change the classes need that token
    (:data:`sccan.serve.protocol.PROTECTED`). Triton's model-repository, shared-memory, trace and
    logging APIs are always restricted to a key nobody else has (the token, or a random one)."""

    def __init__(self, repo: str | os.PathLike, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, log: str | os.PathLike | None = None, verbose: bool = False,
                 python: str | os.PathLike | None = None, address: str = "127.0.0.1",
                 token_file: str | os.PathLike | None = None):
        self.repo = Path(repo).resolve()
        if not (self.repo / "sccan" / "config.pbtxt").is_file():
            raise ServerError(f"{self.repo} is not a model repository made by `sccan triton` (no sccan/config.pbtxt)")
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.log = Path(log) if log else self.repo.parent / f"{self.repo.name}.tritonserver.log"
        self.verbose = verbose
        self.python = str(python or sys.executable)
        self.process: subprocess.Popen | None = None
        self.origin = ""
        self.address = address
        self.token: str | None = None
        if token_file is not None:
            from .remote import read_token

            self.token = read_token(token_file)
        import secrets

        self._admin_key = self.token or secrets.token_urlsafe(32)

    @property
    def _host(self) -> str:
        if self.address in ("0.0.0.0", "::", ""):
            return "localhost"
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def http_url(self) -> str:
        return f"{self._host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._host}:{self.grpc_port}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        binary, backends, libs, self.origin = find_tritonserver(self.python)
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(self.python).parent), env.get("PATH", "")])
        env.pop(TOKEN_ENV, None)
        if self.token is not None:
            import hashlib

            env[TOKEN_ENV] = hashlib.sha256(self.token.encode()).hexdigest()
        if libs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, libs), env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        cmd = [str(binary), f"--model-repository={self.repo}", f"--backend-directory={backends}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}", "--allow-metrics=true", "--exit-on-error=true",
               f"--http-address={self.address}", f"--grpc-address={self.address}",
               f"--metrics-address={self.address}", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
               f"--http-restricted-api={RESTRICTED_HTTP}:{ADMIN_HEADER}={self._admin_key}",
               f"--grpc-restricted-protocol={RESTRICTED_GRPC}:{ADMIN_HEADER}={self._admin_key}",
               f"--log-verbose={1 if self.verbose else 0}"]
        plugin = self.repo / "sccan" / "1" / "bundle" / "libsccan_trt_plugin.so"
        if plugin.is_file() and any(self.repo.glob("sccan_*/1/model.plan")):
            cmd.append(f"--backend-config=tensorrt,plugins={plugin}")  # engines with the plugin node
        return cmd, env

    def start(self) -> "TritonServer":
        cmd, env = self.command()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode}; its log "
                                  f"({self.log}) ends:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.5)
        raise ServerError(f"tritonserver did not become ready in {timeout:.0f} s; its log ({self.log}) ends:\n"
                          f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = EXIT_TIMEOUT_S + 1.0) -> None:
        """Stop the server and its Python-backend stubs (the whole process group): SIGTERM, up to
        ``timeout`` seconds for in-flight requests (the server's own exit timeout is shorter), then
        SIGKILL; the process is reaped, so no zombie is left."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            break
        try:  # the stubs may outlive the server for a moment: end the group
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(5.0)

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

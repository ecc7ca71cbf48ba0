"""Start the real Triton Inference Server on one machine, on loopback: for trying a model repository before it goes to
a GPU host, for `benchmarks/triton_load.py` and for the tests. Production runs Triton's own container (README).

The binary is the one PyPI's `nvidia-pytriton` ships (Python backend only). It runs the repository's Python models in
the Python environment `python_env` (a venv with fusionrt, onnxruntime and numpy<2: the backend stub misreads
tensors with numpy 2); `requirements/triton-server.txt` lists what it needs and `make test` builds it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from fusionrt.runtime.errors import BackendUnavailable, FusionRTError

__all__ = ["TritonServer", "find_tritonserver", "ServerError"]


class ServerError(FusionRTError):
    """Triton could not be started, or stopped answering."""


def find_tritonserver(python_env) -> Path:
    """The `pytriton/tritonserver` folder inside the venv `python_env`; BackendUnavailable when it is not there."""
    env = Path(python_env)
    found = sorted(env.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise BackendUnavailable(
            f"no tritonserver binary in the Python environment '{env}': expected nvidia-pytriton installed there. "
            "Create it with `make build/triton_env/.installed` (or: python3 -m venv ENV && ENV/bin/pip install "
            "-r requirements/triton-server.txt && ENV/bin/pip install --no-deps -e .).")
    return found[-1].parents[1]


def _free_ports(count: int) -> list:
    """`count` distinct loopback ports free a moment ago (held together while picked, so never the same one twice).
    Another process may still take one before the server binds it: `start` then tries new ones."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


PORT_TRIES = 3  # starts on freshly picked ports before a clash is reported
_PORT_CLASH = ("address already in use", "failed to start http service", "failed to start grpc service",
               "failed to listen")


def _die_with_parent(parent: int):
    """In the server's process, before it runs: the kernel sends it SIGTERM when this process dies (a killed test
    or app leaves no server behind); Triton then stops its Python stubs. Linux only; elsewhere nothing. The kernel
    ties it to the thread that started the server: start it from one that outlives it (the main thread does)."""
    def arm() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before the call: nobody will send the signal
            os._exit(1)
    return arm


class TritonServer:
    """`with TritonServer(repo, env) as server:` ... `server.http_url`, `server.grpc_url`; stopped on exit."""

    def __init__(self, repository, python_env, http_port: int | None = None, grpc_port: int | None = None,
                 ready_timeout_s: float = 120.0, log_path=None):
        self.repository = Path(repository).resolve()
        self.python_env = Path(python_env).resolve()
        self.home = find_tritonserver(self.python_env)
        self._pick_ports = http_port is None and grpc_port is None  # ours to pick again after a clash
        picked = _free_ports(2)
        self.http_port, self.grpc_port = http_port or picked[0], grpc_port or picked[1]
        self.ready_timeout_s = ready_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self._scratch: Path | None = None
        self._last_log = ""

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backends(self) -> Path:
        """A backend folder as Triton wants it: the Python backend beside the stub built for the env's Python."""
        python = next(iter(sorted(self.python_env.glob("lib/python3*"))), None)
        version = python.name.removeprefix("python") if python else f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = self.home / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise BackendUnavailable(f"nvidia-pytriton has no Python backend stub for Python {version} (looked for "
                                     f"'{stub}'): create the server's environment with Python 3.8-3.13.")
        folder = self._scratch / "backends" / "python"
        folder.mkdir(parents=True)
        for item in (self.home / "backends" / "python").iterdir():
            if item.is_file():
                os.symlink(item, folder / item.name)
        shutil.copy2(stub, folder / stub.name)
        return folder.parent

    def start(self) -> "TritonServer":
        """Start the server and wait until it is ready; ports picked here are picked again (PORT_TRIES times) when
        another process took one first. On any failure nothing is left: no process, log or scratch folder."""
        for attempt in range(PORT_TRIES):
            try:
                self._launch()
                self._wait_ready()
                return self
            except ServerError as exc:
                clash = any(sign in str(exc).lower() for sign in _PORT_CLASH)
                if clash and not self._pick_ports:
                    raise ServerError(f"tritonserver could not bind its ports (http {self.http_port}, grpc "
                                      f"{self.grpc_port}): one is in use by another process. Pass free ports, or none "
                                      f"(then they are picked). {exc}") from None
                if not clash or attempt + 1 == PORT_TRIES:
                    raise
                self.http_port, self.grpc_port = _free_ports(2)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="fusionrt-triton-"))
        backends = self._backends()
        env = {**os.environ, "PATH": f"{self.python_env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
               "LD_LIBRARY_PATH": os.pathsep.join(
                   [str(self.home.parents[1] / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH", "")])}
        env.pop("PYTHONPATH", None)
        command = [str(self.home / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={backends}",
                   f"--backend-config=python,shm-region-prefix-name=fusionrt{os.getpid()}_{self.http_port}_",
                   "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                   "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                   "--allow-metrics=false", "--exit-on-error=true", "--log-verbose=0"]
        with open(self.log_path or self._scratch / "tritonserver.log", "wb") as log:
            # its own session, so that stop() reaches its Python stubs too; and it dies with us
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log()[-3000:]
                self.stop()
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready. "
                                  f"Its log ends:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        tail = self.log()[-3000:]
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.ready_timeout_s:.0f} s. Its log ends:\n{tail}")

    def log(self) -> str:
        """What the server printed so far (after `stop`, all it printed)."""
        path = self.log_path or (self._scratch / "tritonserver.log" if self._scratch else None)
        return path.read_text(errors="replace") if path and path.is_file() else self._last_log

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the session: the server and its Python stubs
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._scratch is not None:
            self._last_log = self.log()
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

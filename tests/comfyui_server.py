"""A real ComfyUI server for the opt-in harness (tests/test_comfyui_harness.py), and a small client.

The server is ComfyUI's own ``main.py`` started with ``--cpu`` on a free loopback port, in
a temp root that holds everything it writes (input, output, temp, user, database in
memory). An ``extra_model_paths.yaml`` maps ``custom_nodes`` to a folder holding a link to
this checkout (named ``ComfyUI-PoseAnimate``, so nothing else beside the checkout is
imported and the template browser shows the pack's name), and every model folder to a temp
dir of tiny generated weights. Only the pack is loaded (``--disable-all-custom-nodes`` with
the pack whitelisted), so other packs in that ComfyUI cannot break or slow the run.

Nothing here imports ComfyUI: it runs in its own interpreter (``COMFYUI_PYTHON``, default
``$COMFYUI_DIR/.venv/bin/python``, as scripts/get_comfyui.sh builds it). The client uses the
standard library for HTTP and ``websocket-client`` for ``/ws``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "ComfyUI-PoseAnimate"
ENABLE_HINT = (
    "real-ComfyUI tests are opt-in: set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON if its "
    "interpreter is not $COMFYUI_DIR/.venv/bin/python); scripts/get_comfyui.sh GIT_DIR /tmp/comfyui builds one"
)


def comfyui_location() -> tuple[Path, Path] | None:
    """(ComfyUI dir, its python) from the environment, or None when the harness is not enabled."""
    root = os.environ.get("COMFYUI_DIR")
    if not root:
        return None
    root_path = Path(root).expanduser().resolve()
    python = os.environ.get("COMFYUI_PYTHON")
    if python:
        py = Path(python)
    else:
        py = root_path / ".venv" / "bin" / "python"
        if not py.exists():
            py = Path(sys.executable)
    return root_path, py


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_extra_model_paths(path: Path, custom_nodes: Path, models: Path, kinds: list[str]) -> Path:
    """The YAML ComfyUI reads before loading custom nodes: one entry per model folder kind."""
    lines = ["poseanimate_test:", f"  base_path: {json.dumps(str(models))}",
             f"  custom_nodes: {json.dumps(str(custom_nodes))}"]
    lines += [f"  {kind}: {json.dumps(kind)}" for kind in sorted(set(kinds))]
    path.write_text("\n".join(lines) + "\n")
    return path


class ServerError(RuntimeError):
    """The server did not start or died; carries the log tail."""


@dataclass
class RunResult:
    """What one prompt did: websocket messages (in order) and its /history entry."""

    prompt_id: str
    messages: list[dict]
    history: dict
    seconds: float

    @property
    def status(self) -> str:
        return self.history.get("status", {}).get("status_str", "unknown")

    def events(self, kind: str) -> list[dict]:
        return [m["data"] for m in self.messages if m.get("type") == kind]

    def error_text(self) -> str:
        for m in self.history.get("status", {}).get("messages", []):
            if m[0] == "execution_error":
                d = m[1]
                head = f"{d.get('node_type')} (node {d.get('node_id')}): {d.get('exception_type')}: {d.get('exception_message')}"
                return head + "\n" + "".join(d.get("traceback", []))
        return json.dumps(self.history.get("status", {}))[:2000]


@dataclass
class ComfyServer:
    comfy_dir: Path
    python: Path
    root: Path
    models: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    start_seconds: float = 0.0
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    # ---------------------------------------------------------------- lifecycle
    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        custom = self.root / "custom_nodes"
        for sub in (custom, self.input_dir, self.output_dir, self.root / "temp", self.root / "user"):
            sub.mkdir(parents=True, exist_ok=True)  # LoadVideo fails to import without the input dir
        link = custom / PACK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        kinds = [p.name for p in self.models.iterdir() if p.is_dir()]
        yaml = write_extra_model_paths(self.root / "extra_model_paths.yaml", custom, self.models, kinds)
        self.port = self.port or free_port()
        self.log_path = self.root / "comfyui.log"
        cmd = [str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--extra-model-paths-config", str(yaml),
               "--input-directory", str(self.input_dir), "--output-directory", str(self.output_dir),
               "--temp-directory", str(self.root / "temp"), "--user-directory", str(self.root / "user")]
        flags = (self.comfy_dir / "comfy" / "cli_args.py").read_text(errors="replace")
        optional = {  # not in every ComfyUI version: used where its cli_args.py has them
            "--whitelist-custom-nodes": ["--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME],
            "--disable-api-nodes": ["--disable-api-nodes"],
            "--database-url": ["--database-url", "sqlite:///:memory:"],
        }
        for flag, args in optional.items():
            if flag in flags:
                cmd += args
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_NUM_THREADS", "2")
        t0 = time.perf_counter()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                self.start_seconds = time.perf_counter() - t0
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.3)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on port {self.port} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def _proc_status(self, key: str) -> float | None:
        """A memory line of the server's /proc status in GB (Linux), or None where unknown."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except (AttributeError, OSError):
            return None
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith(key + ":")), None)
        return None if kb is None else kb / 2**20

    def start_rss_peak(self) -> float | None:
        """Restart the server's peak-RSS count (Linux ``clear_refs`` 5); returns its RSS now in GB, or
        None where the peak cannot be restarted (then ``rss_peak_gb`` would mix in earlier jobs)."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except (AttributeError, OSError):
            return None
        return self._proc_status("VmRSS")

    def rss_peak_gb(self) -> float | None:
        """The server's peak resident memory since ``start_rss_peak`` (or since it started), in GB."""
        return self._proc_status("VmHWM")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---------------------------------------------------------------- HTTP
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:  # 4xx/5xx still carry a body worth reading
            return exc.code, exc.read()

    def get_json(self, path: str, timeout: float = 30):
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerError(f"GET {path} -> {status}: {data[:500]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload) -> tuple[int, object]:
        status, data = self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            return status, json.loads(data) if data else None
        except json.JSONDecodeError:
            return status, data.decode(errors="replace")

    def upload(self, path: Path, name: str | None = None) -> str:
        """POST /upload/image (it takes videos too); returns the name to put in a Load* node."""
        name = name or path.name
        boundary = uuid.uuid4().hex
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n".encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        status, data = self.request("POST", "/upload/image", b"".join(parts),
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ServerError(f"upload of {name} -> {status}: {data[:500]!r}")
        info = json.loads(data)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def download(self, entry: dict) -> bytes:
        query = urllib.parse.urlencode({"filename": entry["filename"], "subfolder": entry.get("subfolder", ""),
                                        "type": entry.get("type", "output")})
        status, data = self.request("GET", f"/view?{query}", timeout=60)
        if status != 200:
            raise ServerError(f"/view {entry} -> {status}")
        return data

    def submit(self, prompt: dict) -> tuple[int, object]:
        """POST /prompt without waiting (validation errors come back here as HTTP 400)."""
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def healthy(self) -> bool:
        """Still serving and with an empty queue."""
        if not self.alive():
            return False
        try:
            queue = self.get_json("/queue", timeout=10)
            self.get_json("/system_stats", timeout=10)
        except (OSError, ServerError, urllib.error.URLError):
            return False
        return not queue.get("queue_running") and not queue.get("queue_pending")

    # ---------------------------------------------------------------- websocket
    def open_ws(self, timeout: float = 10):
        import websocket  # websocket-client (requirements-test.txt)

        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        return ws

    def run(self, prompt: dict, timeout: float = 300, on_message=None) -> RunResult:
        """Submit ``prompt``, follow /ws until it finishes, and return messages + history.

        ``on_message(server, prompt_id, message)`` sees every JSON message as it arrives
        (the interrupt test uses it to cancel mid-run).
        """
        import websocket

        ws = self.open_ws()
        try:
            t0 = time.perf_counter()
            status, body = self.submit(prompt)
            if status != 200:
                raise ServerError(f"/prompt refused the prompt ({status}): {json.dumps(body)[:3000]}")
            prompt_id = body["prompt_id"]
            messages: list[dict] = []
            deadline = time.monotonic() + timeout
            done = False
            while not done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f}s:\n{self.log_tail()}")
                ws.settimeout(min(left, 5.0))
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    if not self.alive():
                        raise ServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}") from None
                    continue
                if not isinstance(raw, str):
                    if raw[:4] == b"\x00\x00\x00\x03":  # ComfyUI's TEXT event (node id + text): keep it
                        size = int.from_bytes(raw[4:8], "big")
                        messages.append({"type": "progress_text", "data": {
                            "node": raw[8:8 + size].decode(errors="replace"),
                            "text": raw[8 + size:].decode(errors="replace")}})
                    continue  # other binary frames are previews
                msg = json.loads(raw)
                data = msg.get("data", {})
                if isinstance(data, dict) and data.get("prompt_id") not in (None, prompt_id):
                    continue
                messages.append(msg)
                if on_message is not None:
                    on_message(self, prompt_id, msg)
                kind = msg.get("type")
                if kind in ("execution_error", "execution_interrupted"):
                    done = True
                elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    done = True
            seconds = time.perf_counter() - t0
        finally:
            ws.close()
        history = {}
        for _ in range(50):  # history is written right after the final message
            history = self.get_json(f"/history/{prompt_id}").get(prompt_id, {})
            if history.get("status", {}).get("completed") is not None:
                break
            time.sleep(0.1)
        return RunResult(prompt_id, messages, history, seconds)


def convert_ui_workflow(workflow: dict, object_info: dict, python: Path) -> dict:
    """comfy-cli's UI -> API converter, in this interpreter if it has comfy-cli, else in ComfyUI's."""
    try:
        from comfy_cli.workflow_to_api import convert_ui_to_api  # type: ignore
    except ImportError:
        convert_ui_to_api = None
    if convert_ui_to_api is not None:
        return convert_ui_to_api(workflow, object_info)
    code = ("import json, sys\n"
            "from comfy_cli.workflow_to_api import convert_ui_to_api\n"
            "data = json.load(sys.stdin)\n"
            "json.dump(convert_ui_to_api(data['workflow'], data['object_info']), sys.stdout)\n")
    proc = subprocess.run([str(python), "-c", code], input=json.dumps({"workflow": workflow, "object_info": object_info}),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        if "No module named 'comfy_cli'" in proc.stderr:
            raise ImportError("comfy-cli is not installed (pip install comfy-cli into the ComfyUI venv or the test venv)")
        raise RuntimeError(f"comfy-cli conversion failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)

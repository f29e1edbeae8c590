"""The UI workflows in ComfyUI's own frontend, in headless Chromium (opt-in: COMFYUI_DIR + chromium).

The harness's server (tests/test_comfyui_harness.py fixtures, one server for this module)
serves the page; Debian's ``chromium`` runs it headless (``--no-sandbox --disable-gpu
--disable-background-networking``) and is driven over the Chrome DevTools Protocol with
websocket-client. Each ``workflows/*.json`` is fetched by the page from the template route
(as the template browser does) and loaded with ``app.loadGraphData``; then no node may be
reported missing (no node type unknown to LiteGraph, no node flagged with errors, no
"Some Nodes Are Missing" dialog), and the frontend's own ``graphToPrompt`` must give the API
twin in workflows/api/. A screenshot of each loaded graph goes to the test's temp dir. A
control loads a workflow with an unknown node type and checks the same probes catch it.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from comfyui_server import ENABLE_HINT, PACK_NAME, comfyui_location
from paths import api_twin
from test_comfyui_harness import UI_WORKFLOWS, WORKFLOWS, _canonical
from test_comfyui_harness import server, tiny_models  # noqa: F401  (fixtures)


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
pytestmark = [
    pytest.mark.skipif(comfyui_location() is None, reason=ENABLE_HINT),
    pytest.mark.skipif(CHROMIUM is None, reason="the browser check needs Chromium: apt-get install chromium "
                                                "(or set CHROMIUM to a Chrome/Chromium binary)"),
]
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class Page:
    """One Chromium tab over CDP: evaluate JS, collect console errors, take screenshots."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.console_errors: list[str] = []

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(deadline - time.monotonic(), 0.1))
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            if msg.get("method") == "Runtime.exceptionThrown":
                self.console_errors.append(msg["params"]["exceptionDetails"].get("text", "exception"))
            elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"].get("type") == "error":
                self.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                    for a in msg["params"].get("args", [])))

    def eval(self, expression: str, timeout: float = 60):
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"page JS failed: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.eval(expression, timeout=10):
                    return True
            except (RuntimeError, TimeoutError):
                pass
            time.sleep(0.3)
        return False

    def screenshot(self, path: Path) -> Path:
        """PNG of the page, the whole graph fitted into view first (best effort: frontend API)."""
        try:
            self.eval("(async () => { const c = app.canvas; if (c.fitViewToSelectionAnimated) { c.selectItems();"
                      " c.fitViewToSelectionAnimated({duration: 1}); c.deselectAll();"
                      " await new Promise(r => setTimeout(r, 500)); c.setDirty(true, true); } })()")
        except RuntimeError:
            pass
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    websocket = pytest.importorskip("websocket", reason="CDP is driven with websocket-client: pip install websocket-client")
    # A fresh user dir shows a first-run template dialog over the canvas; mark the tour done.
    status, _ = server.request("POST", "/settings/Comfy.TutorialCompleted", b"true", {"Content-Type": "application/json"})
    assert status == 200
    profile = tmp_path_factory.mktemp("chromium_profile")
    log = open(profile.parent / "chromium.log", "wb")
    proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-dev-shm-usage", "--no-first-run",
                             "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                             "--disable-breakpad", f"--user-data-dir={profile}", "--window-size=2400,1300",
                             "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"chromium exited ({proc.returncode}):\n{(profile.parent / 'chromium.log').read_text()[-3000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(_http_get(f"http://127.0.0.1:{port}/json/list"))
        target = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        pg = Page(ws)
        pg.call("Page.enable")
        pg.call("Runtime.enable")
        t0 = time.perf_counter()
        pg.call("Page.navigate", url=server.base + "/")
        ready = ("!!(window.app && window.app.graph && window.LiteGraph && "
                 "LiteGraph.registered_node_types['PoseAnimateLoadPoseDetector'])")
        if not pg.wait_for(ready, timeout=120):
            pg.screenshot(profile.parent / "not_ready.png")
            pytest.fail(f"ComfyUI's page did not come up with the pack's nodes; console errors: {pg.console_errors[-10:]}")
        print(f"\nComfyUI page ready in {time.perf_counter() - t0:.1f}s")
        yield pg
        ws.close()
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Chromium forks helpers (zygotes, renderers): stop its whole process group, started for it alone."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(0.5)  # helpers exit right after the browser process
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


def _http_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


LOAD_AND_PROBE = """
(async (source) => {
  document.querySelectorAll('.p-dialog-close-button, .p-dialog-header-close').forEach(b => b.click());
  await new Promise(r => setTimeout(r, 200));
  const wf = typeof source === 'string' ? await (await fetch(source)).json() : source;
  await app.loadGraphData(wf);
  await new Promise(r => setTimeout(r, 1000));
  const types = LiteGraph.registered_node_types;
  const prompt = await app.graphToPrompt();
  return {
    file_types: wf.nodes.map(n => n.type),
    unregistered: [...new Set(wf.nodes.map(n => n.type).filter(t => !types[t]))],
    flagged: app.graph._nodes.filter(n => n.has_errors).map(n => n.type),
    loaded: app.graph._nodes.length,
    dialogs: Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText.slice(0, 500)),
    prompt: prompt.output,
  };
})
"""


def _load(page: Page, source) -> dict:
    return page.eval(f"({LOAD_AND_PROBE})({json.dumps(source)})", timeout=90)


def _js_numbers(prompt: dict) -> dict:
    """JavaScript has one number type: 1.0 comes back as 1. Compare integral floats as ints."""
    fix = lambda v: int(v) if isinstance(v, float) and v.is_integer() else v  # noqa: E731
    return {k: {**n, "inputs": {name: fix(v) for name, v in n["inputs"].items()}} for k, n in prompt.items()}


def _missing_report(probe: dict) -> list[str]:
    problems = []
    if probe["unregistered"]:
        problems.append(f"node types unknown to the frontend: {probe['unregistered']}")
    if probe["flagged"]:
        problems.append(f"nodes flagged with errors: {probe['flagged']}")
    missing_dialogs = [d for d in probe["dialogs"] if "missing" in d.lower()]
    if missing_dialogs:
        problems.append(f"missing-node dialog: {missing_dialogs}")
    return problems


def test_pack_nodes_registered_in_frontend(page):
    import poseanimate

    listed = page.eval("Object.fromEntries(Object.entries(LiteGraph.registered_node_types)"
                       ".filter(([k]) => k.startsWith('PoseAnimate')).map(([k, v]) => [k, v.category]))")
    classes = poseanimate.NODE_CLASS_MAPPINGS
    assert sorted(listed) == sorted(classes), "pack nodes the frontend does not show (or extra ones)"
    assert all(listed[k] == cls.CATEGORY for k, cls in classes.items()), listed


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_loads_in_browser(page, workflow, tmp_path):
    probe = _load(page, f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(workflow.name)}")
    shot = page.screenshot(tmp_path / f"{workflow.stem}.png")
    print(f"\n{workflow.stem}: {probe['loaded']} nodes loaded, screenshot {shot}")
    assert not _missing_report(probe), f"{workflow.name}: {_missing_report(probe)} (screenshot {shot})"
    assert probe["loaded"] == len(json.loads(workflow.read_text())["nodes"])
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    twin = json.loads(api_twin(workflow).read_text())
    got, want = _canonical(_js_numbers(probe["prompt"])), _canonical(_js_numbers(twin))
    short = lambda items: "\n  ".join(sig[:300] for sig in sorted(items.elements()))  # noqa: E731
    assert got == want, ("the frontend's graphToPrompt differs from the API twin:\n only in browser:\n  "
                         + short(got - want) + "\n only in API file:\n  " + short(want - got))
    real_types = [t for t in probe["file_types"] if t not in FRONTEND_ONLY]
    assert len(probe["prompt"]) == len(real_types)


def test_missing_node_is_reported(page, tmp_path):
    """Control: the probes above do catch a node type the server does not have."""
    workflow = json.loads(UI_WORKFLOWS[0].read_text())
    target = next(n for n in workflow["nodes"] if n["type"].startswith("PoseAnimate"))
    target["type"] = "PoseAnimateNoSuchNode"
    probe = _load(page, workflow)
    page.screenshot(tmp_path / "missing_node.png")
    report = _missing_report(probe)
    assert probe["unregistered"] == ["PoseAnimateNoSuchNode"]
    assert "PoseAnimateNoSuchNode" in probe["flagged"]
    assert any("PoseAnimateNoSuchNode" in d for d in probe["dialogs"]), probe["dialogs"]
    assert len(report) == 3

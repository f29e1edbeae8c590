"""animate.py batch on a local Ray cluster of 2 CPU workers: 6 requests, 1 failing, the batch
killed midway (SIGKILL of its whole process group) and resumed. Every request ends done or failed
with its reason, nothing runs twice to completion, no video is lost or overwritten."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poseanimate.headless import batch

from test_headless_job import write_media

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ray")


def run_batch_cli(requests, out, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "animate.py"), "batch", str(requests), "--out", str(out),
                             "--workers", "2", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def videos(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.mp4") if not p.name.startswith("."))


def make_requests(tmp_path):
    ref, drive = write_media(tmp_path, frames=16)
    lines = [{"id": f"clip{i}", "endpoint": "pose", "image_url": ref, "video_url": drive} for i in range(5)]
    lines.insert(3, {"id": "broken", "endpoint": "pose", "image_url": ref, "video_url": str(tmp_path / "missing.mp4")})
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def kill_and_resume(tmp_path):
    """Start the batch, SIGKILL it once 2 requests are done, run it again.
    Returns (ids finished before the resume, videos before, the resume's summary, its exit code, stderr)."""
    requests, out = make_requests(tmp_path), tmp_path / "out"
    proc = run_batch_cli(requests, out)
    manifest = out / batch.MANIFEST
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and sum('"done"' in line for line in manifest.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, Ray's processes and the workers at once
    proc.wait(30)
    finished_before = {p.parent.name for p in out.glob("*/*") if batch.finished_result(p.parent)}
    videos_before = videos(out)
    proc = run_batch_cli(requests, out)
    stdout, stderr = proc.communicate(timeout=300)
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    return finished_before, videos_before, summary, proc.returncode, stderr


def test_batch_killed_midway_resumes_without_rerunning(tmp_path):
    finished_before, videos_before, summary, code, stderr = kill_and_resume(tmp_path)
    out, requests = tmp_path / "out", tmp_path / "requests.jsonl"
    assert 2 <= len(finished_before) < 5
    assert code == 1, stderr[-3000:]  # one request failed
    assert set(summary["executed"]) & finished_before == set()  # batch_resume_rerun = 0
    assert sorted(summary["done"]) == [f"clip{i}" for i in range(5)] and summary["failed"] == ["broken"]
    state = batch.Manifest(out).state
    assert state["broken"]["status"] == "failed" and "missing.mp4" in state["broken"]["error"]
    assert all(state[f"clip{i}"]["status"] == "done" for i in range(5))
    after = videos(out)
    assert set(videos_before) <= set(after)  # nothing lost
    assert sorted(Path(v).parts[0] for v in after) == [f"clip{i}" for i in range(5)]  # one video per request
    assert all(v.endswith("_00001_.mp4") for v in after)
    assert not list(out.rglob(".*.part*"))

    proc = run_batch_cli(requests, out)  # a third run has nothing to do and does not start Ray
    stdout, _ = proc.communicate(timeout=120)
    assert json.loads(stdout.strip().splitlines()[-1])["executed"] == []


def test_requests_file_errors_name_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: id 'a' is used twice"):
        batch.read_requests(path)
    path.write_text('{"id": "../x"}\n')
    with pytest.raises(ValueError, match="names the output folder"):
        batch.read_requests(path)


def test_worker_keeps_loaders_between_jobs(tmp_path, models_dir):
    ref, drive = write_media(tmp_path)
    worker = batch.LocalWorker(str(ROOT))
    request = {"endpoint": "pose", "image_url": ref, "video_url": drive}
    first = worker.run(request, str(tmp_path / "a"))
    second = worker.run(request, str(tmp_path / "b"))
    worker.executor.close()
    assert first["loaders_reused"] == 0 and second["loaders_reused"] == 1  # the pose detector
    assert "error" in worker.run({"endpoint": "pose", "image_url": ref, "video_url": "nope.mp4"}, str(tmp_path / "c"))

"""animate.py batch in client mode against a real ComfyUI (opt-in, COMFYUI_DIR): two Ray workers,
one per server address (the same server twice here), send pose requests with client.py; a failing
request is retried once and recorded with its reason; a rerun skips everything."""
import json

import pytest

from poseanimate.headless import batch

from test_comfyui_harness import media, server, tiny_models  # noqa: F401  (fixtures, one server per module)

pytest.importorskip("ray")


def test_client_mode_batch(server, media, tmp_path):  # noqa: F811
    ref, drive = media / "poseanimate_reference.png", media / "poseanimate_driving.mp4"
    lines = [{"id": f"r{i}", "endpoint": "pose", "image_url": str(ref), "video_url": str(drive)} for i in range(2)]
    lines.append({"id": "bad", "endpoint": "pose", "image_url": str(ref), "video_url": str(tmp_path / "none.mp4")})
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    summary = batch.run_batch(requests, out, servers=[server.base, server.base])
    assert sorted(summary["done"]) == ["r0", "r1"] and summary["failed"] == ["bad"]
    state = batch.Manifest(out).state
    assert state["bad"]["attempts"] == 2 and "none.mp4" in state["bad"]["error"]
    for rid in ("r0", "r1"):
        assert state[rid]["server"] == server.base and (out / state[rid]["video"]).stat().st_size > 0
        assert json.loads((out / rid / "result.json").read_text())["video"]["file_name"].endswith(".mp4")
    again = batch.run_batch(requests, out, servers=[server.base])
    assert again["executed"] == [] and sorted(again["skipped"]) == ["bad", "r0", "r1"]

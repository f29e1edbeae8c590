"""Many requests over the GPUs of one or several machines, on Ray.

    python animate.py batch requests.jsonl --out DIR [--models M] [--workers N] [--address auto]
    python animate.py batch requests.jsonl --out DIR --servers http://a:8188,http://b:8188   # client mode

One request per line (the hosted JSON; optional ``"id"`` and ``"endpoint"``). Ray runs one worker
actor per GPU (per CPU slot with ``--workers`` when there is no GPU, or per ComfyUI server in
client mode); a local worker keeps one executor whose loaders stay loaded, so jobs naming the same
model files load them once. Each request writes into ``DIR/<id>/``; ``DIR/manifest.jsonl`` gets one
line per finished request (done with its video, or failed with the reason after one retry). A
rerun skips what the manifest records, and also any request whose result JSON is in its folder
(finished while the batch was being killed), so nothing runs twice to completion; a video is
linked into place under a new number, never over another file.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.jsonl"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Item:
    id: str
    request: dict


def read_requests(path) -> list[Item]:
    """The JSONL file's requests; ``id`` defaults to the line number; ids must be unique."""
    items, seen = [], set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON object ({exc})") from None
        if not isinstance(request, dict):
            raise ValueError(f"{path}:{n}: each line must be a JSON object (a hosted request)")
        rid = str(request.pop("id", f"line{n:05d}"))
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", rid) or rid in (".", ".."):
            raise ValueError(f"{path}:{n}: id {rid!r} must be 1-100 of A-Z a-z 0-9 . _ - (it names the output folder)")
        if rid in seen:
            raise ValueError(f"{path}:{n}: id {rid!r} is used twice")
        seen.add(rid)
        items.append(Item(rid, request))
    return items


def finished_result(folder: Path) -> dict | None:
    """A complete result JSON in a request's folder (written atomically), if any."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("video"), dict):
            return {"result": path.relative_to(folder.parent).as_posix(), **data}
    return None


def clean_partial(folder: Path) -> None:
    """Temporary files a killed run left behind (never a finished video)."""
    if folder.is_dir():
        for path in folder.rglob(".*.part*"):
            path.unlink(missing_ok=True)


class Manifest:
    """``manifest.jsonl``: one line per finished request; the last line of an id wins."""

    def __init__(self, out: Path):
        self.path = out / MANIFEST
        self.state: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                self.state[entry["id"]] = entry

    def record(self, entry: dict) -> None:
        self.state[entry["id"]] = entry
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------ workers (run inside Ray actors)
def _bootstrap(root: str) -> None:
    if root not in sys.path:
        sys.path.insert(0, root)
    from pack_loader import load_pack

    load_pack()


class LocalWorker:
    """Runs requests in process; keeps one executor so loaded models stay between jobs."""

    def __init__(self, root: str, models=None, extra_model_paths=None, threads: int = 0):
        _bootstrap(root)
        from poseanimate.headless import executor, job

        if threads:
            import torch

            torch.set_num_threads(threads)
        job.configure_models(models, extra_model_paths)
        self.executor = executor.Executor(keep_loaders=True)

    def run(self, request: dict, out_dir: str) -> dict:
        from poseanimate.headless import job

        try:
            done = job.run_request(request, out_dir, executor=self.executor, quiet=True)
        except Exception as exc:  # noqa: BLE001 - reported to the driver as the request's failure
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"video": done.video.as_posix(), "pose_only": done.pose_only, "pid": os.getpid(),
                "loaders_reused": len(self.executor.reused)}


class ServerWorker:
    """Client mode: sends requests to one ComfyUI server with client.py."""

    def __init__(self, root: str, server: str):
        _bootstrap(root)
        self.server = server

    def run(self, request: dict, out_dir: str) -> dict:
        from poseanimate.headless import job

        client = job.client_module()
        request = dict(request)
        try:
            name = job.endpoint_of(request)
            request.pop("endpoint", None)
            result = client.run(name, request, self.server, Path(out_dir) / "result.json", quiet=True)
        except Exception as exc:  # noqa: BLE001
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"video": (Path(out_dir) / result["video"]["file_name"]).as_posix(), "server": self.server,
                "result": (Path(out_dir) / "result.json").as_posix()}


# ------------------------------------------------------------------ the driver
def run_batch(requests_path, out, *, models=None, extra_model_paths=None, servers=(), workers=0, address=None,
              retries: int = 1, retry_failed: bool = False, log=None) -> dict:
    """Run every request not finished yet; returns {"done", "failed", "skipped", "executed"} id lists."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    items = read_requests(requests_path)
    manifest = Manifest(out)
    summary = {"done": [], "failed": [], "skipped": [], "executed": []}
    todo = collections.deque()
    for item in items:
        entry = manifest.state.get(item.id)
        if entry and (entry["status"] == "done" or (entry["status"] == "failed" and not retry_failed)):
            summary["skipped"].append(item.id)
            summary[entry["status"]].append(item.id)
            continue
        found = finished_result(out / item.id)
        if found is not None:  # finished after the manifest was last written (the batch was killed)
            manifest.record({"id": item.id, "status": "done", "video": f"{item.id}/{found['video']['file_name']}",
                             "result": found["result"], "note": "recovered from its result file"})
            summary["skipped"].append(item.id)
            summary["done"].append(item.id)
            continue
        clean_partial(out / item.id)
        todo.append((item, 0))
    log(f"batch: {len(items)} requests, {len(summary['skipped'])} already finished, {len(todo)} to run")
    if not todo:
        return summary

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the pack is not importable by name in workers
    started_here = not ray.is_initialized()
    if started_here:
        local = address is None
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({"num_cpus": max(workers or 1, len(servers) or 1)} if local and (workers or servers) else {}))
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if servers:
            make = [lambda s=s: ray.remote(num_cpus=0)(ServerWorker).remote(str(ROOT), s) for s in servers]
        elif gpus:
            make = [lambda: ray.remote(num_gpus=1)(LocalWorker).remote(str(ROOT), models, extra_model_paths)] * gpus
        else:
            n = workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)
            make = [lambda: ray.remote(num_cpus=1)(LocalWorker).remote(str(ROOT), models, extra_model_paths, 1)] * n
        actors = [(i, m()) for i, m in enumerate(make)]
        log(f"batch: {len(actors)} worker(s) ({'servers' if servers else f'{gpus} GPU' if gpus else 'CPU'})")
        idle, pending = list(actors), {}
        while todo or pending:
            while todo and idle:
                item, attempt = todo.popleft()
                slot, actor = idle.pop()
                folder = out / item.id
                pending[actor.run.remote(item.request, str(folder))] = (slot, actor, item, attempt)
                summary["executed"].append(item.id)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            slot, actor, item, attempt = pending.pop(ref)
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the worker process died: replace it
                answer = {"error": f"worker died: {exc}"}
                actor = make[slot]()
            idle.append((slot, actor))
            if "error" not in answer:
                video = Path(answer.pop("video"))
                result = Path(answer.pop("result", video.with_suffix(".json")))
                manifest.record({"id": item.id, "status": "done", "video": video.relative_to(out).as_posix(),
                                 "result": result.relative_to(out).as_posix() if result.is_file() else None,
                                 "attempts": attempt + 1, **answer})
                summary["done"].append(item.id)
                log(f"done: {item.id} -> {video.relative_to(out)}")
            elif attempt < retries:
                log(f"retry: {item.id} ({answer['error']})")
                clean_partial(out / item.id)
                todo.append((item, attempt + 1))
            else:
                manifest.record({"id": item.id, "status": "failed", "error": answer["error"], "attempts": attempt + 1})
                summary["failed"].append(item.id)
                log(f"failed: {item.id}: {answer['error']}")
    finally:
        if started_here:
            ray.shutdown()
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="animate.py batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("requests", help="JSONL file: one hosted request per line (optional \"id\", \"endpoint\")")
    p.add_argument("--out", required=True, help="output folder: <id>/ per request and manifest.jsonl")
    p.add_argument("--models", help="models folder with ComfyUI's layout (on every machine)")
    p.add_argument("--extra-model-paths", help="a ComfyUI extra_model_paths.yaml (on every machine)")
    p.add_argument("--servers", help="client mode: comma-separated ComfyUI addresses instead of local workers")
    p.add_argument("--workers", type=int, default=0, help="CPU workers when there is no GPU (default: Ray's CPU count)")
    p.add_argument("--address", help="Ray cluster to join (e.g. auto after `ray start`); default: a local one")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed request before it is recorded (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="run again the requests the manifest records as failed")
    args = p.parse_args(argv)
    servers = [s.strip() for s in (args.servers or "").split(",") if s.strip()]
    t0 = time.perf_counter()
    try:
        summary = run_batch(args.requests, args.out, models=args.models, extra_model_paths=args.extra_model_paths,
                            servers=servers, workers=args.workers, address=args.address, retries=args.retries,
                            retry_failed=args.retry_failed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished requests are in the manifest; run the same command again to resume",
              file=sys.stderr)
        return 130
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary))
    return 0 if not summary["failed"] else 1

"""Run an API-format workflow in this process through the pack's node classes, without ComfyUI.

Every PoseAnimate node is the real class, called as ComfyUI calls it: inputs checked against
INPUT_TYPES (required present, nothing unknown, COMBO values among their choices), FUNCTION
called, a tuple of RETURN_TYPES' length returned (or ComfyUI's ``{"ui", "result"}`` dict).
ComfyUI's core nodes the shipped graphs use come from headless/core_nodes.py.

Like ComfyUI's output cache, nodes whose inputs are all literal values (the loaders) are kept
between ``run`` calls on one Executor (``keep_loaders``), so a batch worker loads a model once for
every job that names the same files; one output per loader class is kept, so a job naming other
files replaces them instead of piling models up.
"""
from __future__ import annotations

import time

import torch

from . import core_nodes
from .core_nodes import Video  # noqa: F401  (re-exported: what a VIDEO input carries)


class GraphError(ValueError):
    """The workflow does not fit the nodes (names the node id, class and input at fault)."""

    def __init__(self, message: str, node_id: str | None = None, input_name: str | None = None):
        super().__init__(message)
        self.node_id, self.input_name = node_id, input_name


class NodeFailed(RuntimeError):
    """A node raised; the message names the node. The original error is ``__cause__``."""

    def __init__(self, node_id: str, class_type: str, exc: BaseException, fields=()):
        """``fields``: the request fields feeding the node, named as client.py names them (headless job)."""
        about = f" (this node works on request field(s): {', '.join(fields)})" if fields else ""
        super().__init__(f"node {node_id} ({class_type}) failed: {type(exc).__name__}: {exc}{about}")
        self.node_id, self.class_type = node_id, class_type


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


class Executor:
    """Runs API-format graphs: class_type -> node class, links resolved in dependency order.

    ``image`` / ``clip`` (tensors) make LoadImage / LoadVideo return them whatever file the graph
    names (tests); otherwise files are read from ``input_dir``. SaveVideo writes under
    ``output_dir`` when given and always records ``(filename_prefix, video)`` in ``saved``.
    ``on_node(node_id, class_type, title)`` is called before each node runs (progress labels),
    ``on_output(node_id, class_type, outputs)`` after (e.g. to set up a loaded model).
    """

    def __init__(self, image=None, clip=None, fps=12.0, *, input_dir=None, output_dir=None, on_node=None,
                 on_output=None, keep_loaders: bool = False):
        self.core = core_nodes.CoreNodes(image=image, clip=clip, fps=fps, input_dir=input_dir, output_dir=output_dir)
        self.on_node = on_node
        self.on_output = on_output  # on_output(node_id, class_type, outputs) after each node
        self.keep_loaders = keep_loaders
        self.loaded: dict[tuple, tuple] = {}  # literal-input node signature -> outputs (kept across runs)
        self.timings: dict[str, float] = {}  # node id -> seconds, of the last run
        self.ui: dict[str, dict] = {}  # node id -> what an output node reported, of the last run
        self.reused: list[str] = []  # node ids served from the kept loaders, of the last run
        import poseanimate

        self.classes = {**core_nodes.node_classes(self.core), **poseanimate.NODE_CLASS_MAPPINGS}

    @property
    def saved(self):
        return self.core.saved

    # ------------------------------------------------------------------ one node
    def check(self, nid: str, ct: str, node: dict, inputs: dict) -> None:
        cls = self.classes[ct]
        spec = cls.INPUT_TYPES()
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        missing = sorted(set(spec.get("required", {})) - set(inputs))
        if missing:
            raise GraphError(f"node {nid} ({ct}) lacks required input(s) {', '.join(missing)}", nid, missing[0])
        unknown = sorted(set(inputs) - set(declared))
        if unknown:
            raise GraphError(f"node {nid} ({ct}) has unknown input(s) {', '.join(unknown)}; is the workflow "
                             "from this version of the pack?", nid, unknown[0])
        for k, s in declared.items():
            raw = node["inputs"].get(k)
            if isinstance(s[0], list) and raw is not None and not _is_link(raw) and raw not in s[0]:
                shown = ", ".join(map(str, s[0][:12])) + (" ..." if len(s[0]) > 12 else "")
                raise GraphError(f"node {nid} ({ct}): {k}={raw!r} is not one of its choices ({shown})", nid, k)

    def call(self, nid: str, ct: str, node: dict, inputs: dict) -> tuple:
        self.check(nid, ct, node, inputs)
        cls = self.classes[ct]
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        if isinstance(out, dict):  # ComfyUI's output-node form
            if out.get("ui") is not None:
                self.ui[nid] = out["ui"]
            out = tuple(out.get("result") or ())
        if not isinstance(out, tuple) or len(out) != len(cls.RETURN_TYPES):
            raise GraphError(f"node {nid} ({ct}) returned {type(out).__name__} of length "
                             f"{len(out) if isinstance(out, tuple) else '?'}, expected {len(cls.RETURN_TYPES)}", nid)
        return out

    # ------------------------------------------------------------------ a graph
    def run(self, graph: dict) -> dict:
        """Run every node of ``graph`` once; returns node id -> outputs."""
        results: dict[str, tuple] = {}
        kept: set[str] = set()
        used: set[tuple] = set()  # loader signatures this run uses (never evicted during it)
        self.timings, self.ui, self.reused = {}, {}, []
        for nid, node in graph.items():
            if node.get("class_type") not in self.classes:
                raise GraphError(f"node {nid}: no node class {node.get('class_type')!r} (not a PoseAnimate node and "
                                 "not one of the core nodes this executor provides: "
                                 f"{', '.join(core_nodes.NAMES)})", nid)

        def value(v, nid):
            if _is_link(v):
                if v[0] not in graph:
                    raise GraphError(f"node {nid} links to node {v[0]}, which is not in the workflow", nid)
                return evaluate(v[0])[v[1]]
            return v

        def evaluate(nid):
            if nid in results:
                return results[nid]
            node = graph[nid]
            ct = node["class_type"]
            inputs = {k: value(v, nid) for k, v in node["inputs"].items()}
            signature = None
            if self.keep_loaders and ct not in core_nodes.NAMES and not any(map(_is_link, node["inputs"].values())) \
                    and not getattr(self.classes[ct], "OUTPUT_NODE", False):
                signature = (ct, repr(sorted(node["inputs"].items())))
            if self.on_node is not None:
                self.on_node(nid, ct, (node.get("_meta") or {}).get("title") or ct)
            t0 = time.perf_counter()
            if signature is not None and signature in self.loaded:
                out = self.loaded[signature]
                self.reused.append(nid)
            else:
                try:
                    out = self.call(nid, ct, node, inputs)
                except (GraphError, NodeFailed, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    raise NodeFailed(nid, ct, exc) from exc
                if signature is not None:  # one kept output per loader class: a new file replaces the old
                    for old in [k for k in self.loaded if k[0] == ct and k not in used]:
                        self.release({old: self.loaded.pop(old)})
                    self.loaded[signature] = out
            if self.on_output is not None:
                self.on_output(nid, ct, out)
            self.timings[nid] = time.perf_counter() - t0
            if signature is not None:
                kept.add(nid)
                used.add(signature)
            results[nid] = out
            return out

        try:
            for nid in graph:
                evaluate(nid)
        finally:
            self.release({k: v for k, v in results.items() if k not in kept})
        return results

    def close(self) -> None:
        """Drop the kept loaders (closing what needs closing)."""
        self.release(dict(enumerate(self.loaded.values())))
        self.loaded.clear()

    @staticmethod
    def release(results):
        """Close what a cache eviction would (mediapipe's solution threads must be closed
        explicitly, or the interpreter can hang at exit once torch's thread pool ran)."""
        for outputs in results.values():
            for obj in outputs:
                if hasattr(obj, "close") and callable(obj.close) and not isinstance(obj, torch.Tensor):
                    obj.close()

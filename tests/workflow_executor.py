"""Run an API-format workflow through the pack's node classes, the way ComfyUI would, without ComfyUI.

Every PoseAnimate node is the real class, called as ComfyUI calls it (inputs checked against
INPUT_TYPES, COMBO values checked against their choices, FUNCTION called, a tuple of
RETURN_TYPES' length returned). ComfyUI's core nodes (LoadImage, LoadVideo, GetVideoComponents,
CreateVideo, SaveVideo) are minimal stand-ins fed with the given reference image and clip.
"""
import torch

import poseanimate


class Video:
    """What ComfyUI's VIDEO type carries for these graphs: frames, fps, audio."""

    def __init__(self, images, fps, audio=None):
        self.images, self.fps, self.audio = images, fps, audio


class Executor:
    """Runs an API-format graph: class_type -> node class, links resolved in dependency order."""

    def __init__(self, image=None, clip=None, fps=12.0):
        self.image, self.clip, self.fps = image, clip, fps
        self.saved = []
        self.classes = dict(poseanimate.NODE_CLASS_MAPPINGS)

    def core(self, ct, inputs):
        if ct == "LoadImage":
            return (self.image, torch.zeros(self.image.shape[:3]))
        if ct == "LoadVideo":
            return (Video(self.clip, self.fps),)
        if ct == "GetVideoComponents":
            v = inputs["video"]
            return (v.images, v.audio, v.fps)
        if ct == "CreateVideo":
            return (Video(inputs["images"], inputs["fps"], inputs.get("audio")),)
        if ct == "SaveVideo":
            self.saved.append((inputs["filename_prefix"], inputs["video"]))
            return ()
        raise KeyError(f"no stand-in for core node {ct}")

    def call(self, ct, node, inputs):
        cls = self.classes[ct]
        spec = cls.INPUT_TYPES()
        declared = {**spec["required"], **spec.get("optional", {})}
        assert set(spec["required"]) <= set(inputs), f"{ct}: missing {set(spec['required']) - set(inputs)}"
        assert set(inputs) <= set(declared), f"{ct}: unknown inputs {set(inputs) - set(declared)}"
        for k, s in declared.items():
            raw = node["inputs"].get(k)
            if isinstance(s[0], list) and raw is not None and not isinstance(raw, list):
                assert raw in s[0], f"{ct}.{k}={raw!r} not in {s[0]}"
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
        return out

    def run(self, graph):
        results = {}

        def value(v):
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                return evaluate(v[0])[v[1]]
            return v

        def evaluate(nid):
            if nid in results:
                return results[nid]
            node = graph[nid]
            inputs = {k: value(v) for k, v in node["inputs"].items()}
            ct = node["class_type"]
            out = self.call(ct, node, inputs) if ct in self.classes else self.core(ct, inputs)
            results[nid] = out
            return out

        try:
            for nid in graph:
                evaluate(nid)
        finally:
            self.release(results)
        return results

    @staticmethod
    def release(results):
        """Close what a cache eviction would (mediapipe's solution threads must be closed
        explicitly, or the interpreter can hang at exit once torch's thread pool ran)."""
        for outputs in results.values():
            for obj in outputs:
                if hasattr(obj, "close") and callable(obj.close) and not isinstance(obj, torch.Tensor):
                    obj.close()


def widget_names(spec: dict) -> list:
    """Names of a node's widget values in UI-format ``widgets_values`` order, from INPUT_TYPES.

    COMBO, INT, FLOAT, STRING and BOOLEAN inputs are widgets unless ``forceInput`` (a socket only);
    an input with ``control_after_generate`` (a seed) is followed by the frontend's control widget (None).
    """
    names = []
    for section in ("required", "optional"):
        for name, s in spec.get(section, {}).items():
            if len(s) > 1 and s[1].get("forceInput"):
                continue
            if isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                names.append(name)
                if len(s) > 1 and s[1].get("control_after_generate"):
                    names.append(None)
    return names

"""Write workflows/one_to_all_animation_distilled.json (+ its API twin) from the official-settings
One-to-All workflow: the same graph with a step-distillation LoRA in the loader and the sampler's
distilled preset. Run it after editing the official template (or its API twin workflows/api/one_to_all_animation.json):
``python scripts/make_distilled_workflow.py``; tests/test_one_to_all_workflow.py checks the pair."""
import json
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
OFFICIAL = "One-to-All Animation - animate a character photo with a dance video.json"  # template (UI) names
DISTILLED = "One-to-All Animation 4-step distilled - animate a character photo with a dance video.json"
LORA = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
LOADER = {"lora_1": LORA, "lora_1_strength": 1.0, "lora_mode": "merged"}
SAMPLER = {"steps": 4, "image_guidance_scale": 1.0, "pose_guidance_scale": 1.0, "preset": "distilled"}
NOTE = (
    "One-to-All Animation with a step-distillation LoRA (lightx2v kind): the same graph as one_to_all_animation, "
    "4 steps instead of 30 and one model call per step instead of three (about 20x fewer transformer calls).\n\n"
    f"LoRA: a Wan2.1-T2V step-distillation LoRA of the model's size in models/loras (here lightx2v's {LORA} for the 14B "
    "model), picked in the loader's lora_1; it lands on the main transformer blocks, merged (or unmerged over fp8 weights).\n"
    "Sampler preset 'distilled': 4-8 steps on the distilled timesteps (1000, 937.5, 833.3, 625 for 4 steps: lightx2v's "
    "[1000, 750, 500, 250] on the shift-5 curve), x0 prediction with fresh noise between steps, guidance off "
    "(the guidance scales are ignored). The console says how many transformer calls the run makes (chunks x steps).")


def _widget_names(node_class) -> list:
    import sys

    sys.path[:0] = [str(WORKFLOWS.parent), str(WORKFLOWS.parent / "tests")]
    from pack_loader import load_pack
    from workflow_executor import widget_names

    load_pack()
    import poseanimate

    return widget_names(poseanimate.NODE_CLASS_MAPPINGS[node_class].INPUT_TYPES())


def main() -> None:
    ui = json.loads((WORKFLOWS / OFFICIAL).read_text())
    api = json.loads((WORKFLOWS / "api" / "one_to_all_animation.json").read_text())
    for node in ui["nodes"]:
        changes = {"PoseAnimateOneToAllLoader": LOADER, "PoseAnimateOneToAllSampler": SAMPLER}.get(node["type"])
        if changes:
            names = _widget_names(node["type"])
            node["widgets_values"] = [changes.get(n, v) for n, v in zip(names, node["widgets_values"])]
        if node["type"] == "PoseAnimateOneToAllLoader":
            node["size"] = [340, 290]
        if node["type"] in ("Note", "MarkdownNote"):
            node["widgets_values"] = [NOTE]
    for node in api.values():
        if node["class_type"] == "PoseAnimateOneToAllLoader":
            node["inputs"].update(LOADER)
        if node["class_type"] == "PoseAnimateOneToAllSampler":
            node["inputs"].update(SAMPLER)
            node["_meta"]["poseanimate_test_overrides"] = {"steps": 4, "resolution": "reference"}
    (WORKFLOWS / DISTILLED).write_text(json.dumps(ui, indent=1, ensure_ascii=False) + "\n")
    (WORKFLOWS / "api" / "one_to_all_animation_distilled.json").write_text(json.dumps(api, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

"""Write the template browser's thumbnails: workflows/<template>.jpg (what ComfyUI's frontend loads).

    python scripts/template_previews.py

Each picture is made by the pack's own pose stage from the sample media (scikit-image's
astronaut as the character, a swaying copy of it as the driving clip): the inputs a workflow
takes and the pose video it drives the model with, in that model's drawing style. No model
weights are needed, so the pictures show inputs and pose conditioning, not a generated video.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# template stem -> (headline, alignment mode, drawing style); None: no pose stage (AnimateDiff)
PLANS = {
    "one_to_all_animation": ("One-to-All: the photo dances like the video", "one_to_all_ref", "one_to_all"),
    "one_to_all_animation_distilled": ("One-to-All, 4 steps: the photo dances like the video", "one_to_all_ref",
                                       "one_to_all"),
    "unianimate": ("UniAnimate-DiT: the photo dances like the video", "unianimate", "unianimate"),
    "pose_alignment": ("Pose alignment: dance poses fitted to the photo", "one_to_all_ref", "one_to_all"),
    "animatediff_v2v": ("AnimateDiff: a video redrawn by SD1.5", None, None),
    "animatediff_v2v_pose": ("AnimateDiff + OpenPose: redrawn, poses kept", "none", "openpose"),
}
TILE = 200  # two rows of three square tiles: about the shape of a template card


def _headline(sheet, text):
    import cv2
    import numpy as np

    band = np.full((40, sheet.shape[1], 3), 20, np.uint8)
    cv2.putText(band, text, (10, 27), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (255, 220, 120), 2, cv2.LINE_AA)
    return np.concatenate([band, sheet])


def build(stem: str):
    import numpy as np

    from pack_loader import load_pack

    load_pack()
    from poseanimate.pose import detect, preview, sample_media, stage

    headline, mode, style = PLANS[stem]
    reference = sample_media.sample_reference_image()
    driving = sample_media.sample_driving_clip(24, (512, 512))
    picks = [0, 6, 12]
    if mode is None:
        import cv2

        text = np.full((512, 3 * 512 + 8, 3), 48, np.uint8)
        for y, line in ((200, "+ your prompt"), (300, "+ any SD1.5 checkpoint and LoRAs"),
                        (400, "= the same motion, restyled")):
            cv2.putText(text, line, (60, y), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (255, 255, 255), 4, cv2.LINE_AA)
        rows = [([driving[i] for i in picks], [f"source frame {i + 1}" for i in picks]), ([text], ["what it makes"])]
    else:
        detector = detect.load_detector("mediapipe")
        result = stage.run_pose_stage(reference, driving, detector, mode=mode, style=style)
        rows = [([reference] + [result.driving_frames[i] for i in picks[:2]],
                 ["character photo", "driving frame 1", "driving frame 7"]),
                ([result.pose_video[i] for i in picks], [f"{style} pose {i + 1}" for i in picks])]
    sheets = [preview.contact_sheet(tiles, labels, tile_height=TILE) for tiles, labels in rows]
    width = min(s.shape[1] for s in sheets)
    sheet = np.concatenate([s[:, :width] for s in sheets])
    return _headline(sheet, headline)


def main() -> int:
    import cv2

    from paths import ui_workflow

    for stem in PLANS:
        out = ui_workflow(stem).with_suffix(".jpg")
        cv2.imwrite(str(out), cv2.cvtColor(build(stem), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

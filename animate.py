"""Headless main job: reference image + driving video -> aligned pose video (+ preview, + pose JSON).

    python animate.py                      # bundled sample media, embedded detector
    python animate.py --reference me.png --driving dance.mp4 --mode one_to_all_ref --out output/

Writes <out>/aligned_pose.mp4, <out>/preview.png (reference | driving frame | detected pose |
aligned pose) and <out>/poses.json (POSE_KEYPOINT of the aligned poses). Later stages (the
animation models) extend this job when their weights are present.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from pack_loader import load_pack  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", help="reference image (the character); default: bundled sample")
    p.add_argument("--driving", help="driving video (the motion); default: bundled sample clip")
    p.add_argument("--out", default="output", help="output folder (default: output/)")
    p.add_argument("--detector", default="mediapipe", choices=["mediapipe", "dwpose"])
    p.add_argument("--pose-models", help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (dwpose)")
    p.add_argument("--mode", default="unianimate", help="alignment: none, unianimate, one_to_all_ref, one_to_all_pose")
    p.add_argument("--style", default=None, help="drawing style (default: the mode's own)")
    p.add_argument("--every-nth", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=0)
    p.add_argument("--frames", type=int, default=24, help="length of the generated sample clip")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    load_pack()
    import cv2
    import numpy as np

    from poseanimate.pose import detect, keypoints, preview, render, sample_media, stage, video_io

    started = time.perf_counter()
    if args.reference:
        reference = cv2.cvtColor(cv2.imread(args.reference, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        reference = sample_media.sample_reference_image()
    fps = 16.0
    if args.driving:
        driving, fps = video_io.read_video(args.driving)
    else:
        driving = sample_media.sample_driving_clip(args.frames)

    if args.detector == "dwpose":
        folder = Path(args.pose_models or "models/pose_models")
        detector = detect.load_detector("dwpose", det_path=folder / "yolox_l.onnx", pose_path=folder / "dw-ll_ucoco_384.onnx")
    else:
        detector = detect.load_detector("mediapipe")

    result = stage.run_pose_stage(reference, driving, detector, mode=args.mode, style=args.style,
                                  every_nth=args.every_nth, max_frames=args.max_frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video_path = video_io.write_mp4(out / "aligned_pose.mp4", result.pose_video, fps=fps / args.every_nth)
    ref_img = result.aligned.reference_image if result.aligned.reference_image is not None else reference
    style = args.style or stage.STYLE_FOR_MODE[args.mode]
    ref_pose_img = render.render_pose(result.aligned.reference_pose, style, ref_img.shape[1], ref_img.shape[0])
    sheet = preview.contact_sheet(
        [ref_img, ref_pose_img, result.driving_frames[0], result.detected_video[0], result.pose_video[0]],
        ["reference", "reference pose", "driving frame", "detected pose", f"aligned: {args.mode} / {style}"],
    )
    cv2.imwrite(str(out / "preview.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    (out / "poses.json").write_text(json.dumps(keypoints.frames_to_pose_keypoint(result.aligned.frames)))
    found = sum(1 for f in result.driving_poses if f.num_people)
    print(f"frames: {len(result.pose_video)} ({found} with a person), size: {result.pose_video.shape[2]}x{result.pose_video.shape[1]}")
    print(f"wrote: {video_path}, {out / 'preview.png'}, {out / 'poses.json'}")
    print(f"seconds: {time.perf_counter() - started:.2f}")
    return 0 if np.any(result.pose_video) else 1


if __name__ == "__main__":
    raise SystemExit(main())

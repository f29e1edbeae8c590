"""Headless main job: the whole animation in this process, no ComfyUI server.

    python animate.py REQUEST.json [--models DIR] [--out output/]   # a hosted request -> video + result JSON
    python animate.py batch requests.jsonl --out DIR                # many requests over GPUs / machines (Ray)
    torchrun --nproc-per-node 4 animate.py REQUEST.json             # one video over 4 GPUs (sequence parallel)
    python animate.py                                               # demo: sample media -> aligned pose video
    python animate.py --reference me.png --driving dance.mp4 --mode one_to_all_ref --out output/

REQUEST.json is a hosted endpoint's request (one-to-all, uni-animate, animatediff-v2v, or pose);
the endpoint comes from --endpoint, the request's "endpoint" field, or a field only it has. The
matching workflows/api/ graph runs in process; the video and a result JSON of the hosted shape
are written to --out. Without the model files, the pose stage runs and the job prints which file
goes in which folder. Exit codes: 0 done, 1 error, 2 bad request, 4 the graph failed, 130 Ctrl-C
(nothing written).

Without REQUEST.json (the demo, scripts/demo.sh): writes <out>/aligned_pose.mp4,
<out>/preview.png (reference | driving frame | detected pose | aligned pose) and <out>/poses.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from pack_loader import load_pack  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("request", nargs="?", help="hosted request JSON file ('-' for stdin); none: the pose demo")
    p.add_argument("--endpoint", help="one-to-all, uni-animate, animatediff-v2v or pose (default: from the request)")
    p.add_argument("--models", help="models folder with ComfyUI's layout (diffusion_models/, vae/, ...)")
    p.add_argument("--extra-model-paths", help="a ComfyUI extra_model_paths.yaml naming model folders")
    p.add_argument("--workflow", help="API-format workflow to run instead of the endpoint's own")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--reference", help="reference image (the character); default: bundled sample")
    p.add_argument("--driving", help="driving video (the motion); default: bundled sample clip")
    p.add_argument("--out", default="output", help="output folder (default: output/)")
    p.add_argument("--detector", default="mediapipe", choices=["mediapipe", "dwpose"])
    p.add_argument("--pose-models", help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (dwpose), or the "
                   "mediapipe .task files that mediapipe >= 1.x needs (default: models/pose_models)")
    p.add_argument("--mode", default="unianimate", help="alignment: none, unianimate, one_to_all_ref, one_to_all_pose")
    p.add_argument("--style", default=None, help="drawing style (default: the mode's own)")
    p.add_argument("--every-nth", type=int, default=1)
    p.add_argument("--max-frames", type=int, default=0)
    p.add_argument("--frames", type=int, default=24, help="length of the generated sample clip")
    return p.parse_args(argv)


def run_request_cli(args) -> int:
    """REQUEST.json -> the endpoint's workflow in process -> video + result JSON in --out."""
    load_pack()
    from poseanimate.headless import executor, job

    client = job.client_module()
    sp, rank, out = None, 0, args.out
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun: one video over all ranks
        sp, rank = sequence_parallel_setup()
        if rank:
            out = tempfile.mkdtemp(prefix=f"poseanimate-rank{rank}-")  # rank 0 writes the results
    try:
        job.configure_models(args.models, args.extra_model_paths)
        request = client._read_request(args.request)
        done = job.run_request(request, out, endpoint=args.endpoint, workflow=args.workflow,
                               quiet=args.quiet or rank > 0, sequence_parallel=sp)
    except KeyboardInterrupt:
        print("interrupted: stopped cleanly, no output written", file=sys.stderr)
        return 130
    except client.ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (executor.GraphError, executor.NodeFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if rank:
            shutil.rmtree(out, ignore_errors=True)
        if sp is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        print(json.dumps(done.result, indent=2))
    return 0


def sequence_parallel_setup():
    """torchrun's environment -> a process group (NCCL on GPUs, gloo on CPU) and the split."""
    import torch
    import torch.distributed as dist

    from poseanimate.models.wan.sequence_parallel import SequenceParallel

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return SequenceParallel(), dist.get_rank()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:
        load_pack()
        from poseanimate.headless import batch

        return batch.main(argv[1:])
    args = parse_args(argv)
    if args.request:
        return run_request_cli(args)
    try:
        return run_pose_demo(args)
    except (OSError, ValueError, ImportError) as exc:  # a missing file or model: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_pose_demo(args) -> int:
    """Reference + driving video (or the bundled samples) -> the pose stage -> pose video, preview, JSON."""
    load_pack()
    import cv2
    import numpy as np

    from poseanimate.pose import detect, keypoints, preview, render, sample_media, stage, video_io

    started = time.perf_counter()
    if args.reference:
        picture = cv2.imread(args.reference, cv2.IMREAD_COLOR)
        if picture is None:
            raise FileNotFoundError(f"--reference {args.reference}: no such image, or not one OpenCV can read "
                                    "(use a PNG or JPEG)")
        reference = cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
    else:
        reference = sample_media.sample_reference_image()
    fps = 16.0
    if args.driving:
        # decode only what the stage keeps (a 612-frame 1080p example clip is 3.8 GB as uint8)
        driving, fps = video_io.read_video(args.driving, max_frames=args.max_frames * max(args.every_nth, 1))
    else:
        driving = sample_media.sample_driving_clip(args.frames)

    folder = Path(args.pose_models or "models/pose_models")
    if args.detector == "dwpose":
        detector = detect.load_detector("dwpose", det_path=folder / "yolox_l.onnx", pose_path=folder / "dw-ll_ucoco_384.onnx")
    else:  # mediapipe <= 0.10.21 has its weights inside; >= 1.x (Python 3.13) reads .task files from the folder
        detector = detect.load_detector("mediapipe", folder)

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

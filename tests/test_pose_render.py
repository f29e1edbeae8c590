"""Pose rendering: every reference render of the three official drawers, reproduced from keypoints.

Each reference format is converted into our 134-point layout by a small converter below
(the conversions are documented there); the render must reach PSNR >= 40 dB against the
PNG, and the number of differing pixels is printed (run with -s) and bounded. With
OpenCV 5.0, 42 of the 44 renders are pixel exact; align_0002 differs by 7 border pixels
(an OpenCV 4 -> 5 change the README reports) and retarget_refmode_frame1 by 21 (its
keypoints are float64; our layout stores float32). One-to-All's README promises pixel-exact
renders on OpenCV 4.8 and 5.0, so those 16 are required to be exact.
"""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from paths import REFERENCE
from poseanimate.pose import render
from poseanimate.pose.keypoints import PoseFrame, frames_from_pose_keypoint

OPENPOSE = REFERENCE / "openpose_render"
UNIANIMATE = REFERENCE / "unianimate_dit"
ONE_TO_ALL = REFERENCE / "one_to_all"


def _load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _check(image: np.ndarray, path, max_differing: float = 0.001, exact: bool = False) -> None:
    ref = _load_rgb(path)
    assert image.shape == ref.shape and image.dtype == np.uint8
    differing = int((image != ref).any(axis=-1).sum())
    mse = float(((image.astype(np.float64) - ref) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    print(f"{path.name}: {differing} differing pixels, PSNR {psnr:.1f} dB")
    assert psnr >= 40.0, f"{path.name}: PSNR {psnr:.2f} dB < 40 ({differing} pixels differ)"
    assert differing <= max_differing * ref.shape[0] * ref.shape[1], f"{path.name}: {differing} pixels differ"
    if exact:
        assert differing == 0, f"{path.name}: {differing} pixels differ, expected a pixel-exact render"


# --- converters: reference formats -> our 134-point layout ---------------------------------

def _unianimate_from_detector(raw: dict) -> np.ndarray:
    """UniAnimate's raw DWPose output (133 COCO-WholeBody points in pixels) -> (134, 3).

    As the official post-processing: neck = float32 mean of the shoulders with score 1 if both
    shoulders are > 0.3 (else 0), inserted at 17, then reordered to OpenPose order; x / width,
    y / height in float32. Feet, face and hands keep their COCO-WholeBody order, which is ours.
    """
    xy = np.asarray(raw["keypoints_xy_pixels"], np.float32)
    score = np.asarray(raw["scores"], np.float32)
    info = np.concatenate([xy, score[:, None]], axis=1)
    neck = info[[5, 6]].mean(axis=0)
    neck[2] = float(info[5, 2] > 0.3 and info[6, 2] > 0.3)
    pts = np.insert(info, 17, neck, axis=0)
    mmpose = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
    openpose = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
    pts[openpose] = pts[mmpose]
    pts[:, 0] /= np.float32(raw["image_width"])
    pts[:, 1] /= np.float32(raw["image_height"])
    return pts


def _unianimate_from_draw_input(pose: dict) -> np.ndarray:
    """UniAnimate's draw-function dict (after post-processing / alignment) -> (134, 3).

    Body: subset -1 -> score 0, else 1. Its two toe points (already means) go into both toe
    slots of each foot, so our mean gives them back exactly. Hands and face: score 1 for every
    point, because the official drawer decides by coordinates alone (invisible points are at
    -1 and skipped by its "> 0.01" test; after alignment they may move, and are drawn then).
    """
    pts = np.zeros((134, 3), np.float32)
    cand = np.asarray(pose["bodies"]["candidate"], np.float32)
    subset = np.asarray(pose["bodies"]["subset"])[0]
    pts[:18, :2] = cand[:18]
    pts[:18, 2] = subset[:18] != -1
    for k, slots in ((18, [18, 19]), (19, [21, 22])):
        pts[slots, :2] = cand[k]
        pts[slots, 2] = float(subset[k] != -1)
    hands = np.asarray(pose["hands"], np.float32)
    pts[92:113, :2], pts[113:134, :2] = hands[0], hands[1]  # hands[0] = left (COCO 91-111)
    pts[24:92, :2] = np.asarray(pose["faces"], np.float32)[0]
    pts[24:134, 2] = 1.0
    return pts


def _array(entry: dict) -> np.ndarray:
    return np.asarray(entry["data"], dtype=entry["dtype"])


def _one_to_all_from_dwpose(pose: dict) -> np.ndarray:
    """One-to-All's draw_pose_aligned input -> (134, 3).

    Body: score where subset != -1 (score > 0), else 0. hands[0] holds the person's RIGHT hand
    (from keypoints_right_hand), hands[1] the left one; faces are the 68 iBUG points.
    """
    pts = np.zeros((134, 3), np.float32)
    bodies = pose["bodies"]
    score = _array(bodies["score"])[0]
    pts[:18, :2] = _array(bodies["candidate"])[:18]
    pts[:18, 2] = np.where(_array(bodies["subset"])[0][:18] == -1, 0.0, score[:18])
    hands, hand_scores = _array(pose["hands"]), _array(pose["hands_score"])
    pts[113:134, :2], pts[113:134, 2] = hands[0], hand_scores[0]
    pts[92:113, :2], pts[92:113, 2] = hands[1], hand_scores[1]
    pts[24:92, :2], pts[24:92, 2] = _array(pose["faces"])[0], _array(pose["faces_score"])[0]
    return pts


# --- openpose: comfyui_controlnet_aux --------------------------------------------------------

def _openpose_cases():
    variants = {"": {}, "_xinsr": {"xinsr_stick_scaling": True},
                "_bodyonly": {"draw_hands": False, "draw_face": False}}
    cases = []
    for path in sorted(OPENPOSE.glob("*_comfyui_controlnet_aux*.png")):
        stem = path.stem
        name, variant = stem.split("_comfyui_controlnet_aux")
        set_name, w, h = name.split("_")
        cases.append(pytest.param(path, set_name, int(w[1:]), int(h[1:]), variants[variant], id=stem))
    assert len(cases) == 10
    return cases


@pytest.fixture(scope="module")
def openpose_raw():
    return json.loads((OPENPOSE / "keypoints_raw.json").read_text())


@pytest.mark.parametrize("path,set_name,width,height,options", _openpose_cases())
def test_openpose_matches_comfyui_controlnet_aux(openpose_raw, path, set_name, width, height, options):
    frame = PoseFrame(width, height, np.asarray(openpose_raw["sets"][set_name]["people"], np.float32))
    _check(render.render_pose(frame, "openpose", **options), path)


def test_openpose_from_pose_keypoint_json_matches():
    """ComfyUI POSE_KEYPOINT (pixel coordinates, as the DWPose node writes it) draws the same PNGs."""
    data = json.loads((OPENPOSE / "keypoints.json").read_text())
    order = json.loads((OPENPOSE / "keypoints_raw.json").read_text())["frames_order"]
    frames = frames_from_pose_keypoint(data)
    for name, frame in zip(order, frames):
        _check(render.render_pose(frame, "openpose"), OPENPOSE / f"{name}_comfyui_controlnet_aux.png")


# --- unianimate: UniAnimate-DiT --------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1])
def test_unianimate_matches_official_render(index):
    sets = json.loads((UNIANIMATE / "pose_keypoints.json").read_text())["sets"]
    case = sets[index]
    frame = PoseFrame(case["render"]["W"], case["render"]["H"],
                      _unianimate_from_detector(case["raw_detector_output"])[None])
    image = render.render_pose(frame, "unianimate")
    _check(image, UNIANIMATE / case["render"]["file_png"])
    # swap_rb=False is the raw canvas (cv2.imread order); its hash is in the JSON.
    raw = render.render_pose(frame, "unianimate", swap_rb=False)
    np.testing.assert_array_equal(raw, image[..., ::-1])
    assert hashlib.sha256(np.ascontiguousarray(raw).tobytes()).hexdigest() == case["render"]["canvas_array_sha256"]


def test_unianimate_detector_conversion_matches_official_draw_input():
    """Our converter + the renderer's toe rule reproduce the official post-processed dict."""
    for case in json.loads((UNIANIMATE / "pose_keypoints.json").read_text())["sets"]:
        pts = _unianimate_from_detector(case["raw_detector_output"])
        official = case["draw_input_pose"]
        cand = np.asarray(official["bodies"]["candidate"], np.float32)
        subset = np.asarray(official["bodies"]["subset"])[0]
        body, visible = render._unianimate_points(pts)
        np.testing.assert_array_equal(visible, subset != -1)
        np.testing.assert_array_equal(body[visible], cand[visible])


def _align_cases():
    golden = json.loads((UNIANIMATE / "align_golden.json").read_text())
    for entry in golden["rendered_files"]:
        png = entry["png"]
        pose = golden["reference"]["pose"] if png == "align_pose.png" else golden["aligned_driving"][int(png[6:10])]
        yield pytest.param(pose, png, id=png)


@pytest.mark.parametrize("pose,png", list(_align_cases()))
def test_unianimate_matches_alignment_renders(pose, png):
    frame = PoseFrame(512, 768, _unianimate_from_draw_input(pose)[None])
    _check(render.render_pose(frame, "unianimate"), UNIANIMATE / png)


# --- one_to_all: One-to-All Animation --------------------------------------------------------

def _one_to_all_cases():
    data = json.loads((ONE_TO_ALL / "pose_keypoints.json").read_text())
    for entry in data["renders"]:
        pose = data["sets"][entry["set"]]["dwpose"]
        yield pytest.param(pose, entry["W"], entry["H"], entry["kwargs"], entry["file"], id=entry["file"])
    golden = json.loads((ONE_TO_ALL / "retarget_golden.json").read_text())
    for mode, poses in (("refmode", golden["ref_mode"]["outputs_dwposes"]),
                        ("posemode", golden["pose_mode"]["align_to_pose_outputs"])):
        for i, pose in enumerate(poses):
            name = f"retarget_{mode}_frame{i}_512x768.png"
            yield pytest.param(pose, 512, 768, {"face_change": True}, name, id=name)


@pytest.mark.parametrize("pose,width,height,options,png", list(_one_to_all_cases()))
def test_one_to_all_matches_draw_pose_aligned(pose, width, height, options, png):
    frame = PoseFrame(width, height, _one_to_all_from_dwpose(pose)[None])
    _check(render.render_pose(frame, "one_to_all", **options), ONE_TO_ALL / png, exact=png.startswith("pose_render_"))


def test_reference_png_coverage():
    """Every render PNG of the three folders is one of the cases above (none forgotten)."""
    covered = {p.values[0].name for p in _openpose_cases()}
    covered |= {p.values[1] for p in _align_cases()} | {"pose_render_A.png", "pose_render_B.png"}
    covered |= {p.values[4] for p in _one_to_all_cases()}
    not_renders = {  # other drawers or not a pure render
        *(p.name for p in OPENPOSE.glob("*controlnet_aux_0.0.10.png")),    # controlnet-aux 0.0.10 flavour
        "retarget_posemode_refpose_warped_512x768.png",  # render + cv2.warpAffine (retargeting)
        "retarget_posemode_mask_512x768.png",            # warp mask, no pose
    }
    all_pngs = {p.name for folder in (OPENPOSE, UNIANIMATE, ONE_TO_ALL) for p in folder.glob("*.png")}
    all_pngs -= {"tiny_ref_image.png"}
    assert all_pngs - not_renders == covered


# --- options, API, bad input -----------------------------------------------------------------

def _person(seed: int = 0, spread: float = 0.0) -> np.ndarray:
    """A plausible whole-body person (all scores 0.9), optionally with some points off-canvas."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((134, 3), np.float32)
    pts[:, :2] = rng.uniform(0.2, 0.8, (134, 2))
    pts[:, 2] = 0.9
    if spread:
        far = rng.choice(134, 30, replace=False)
        pts[far, :2] = rng.uniform(-spread, 1 + spread, (30, 2))
    return pts


def test_styles_and_defaults():
    assert render.STYLES == ("openpose", "unianimate", "one_to_all")
    assert render.style_options("unianimate")["swap_rb"] is True
    assert render.style_options("openpose") == {"draw_body": True, "draw_hands": True, "draw_face": True,
                                                "xinsr_stick_scaling": False}
    assert render.style_options("one_to_all") == {"without_face": False, "face_change": False, "head_change": False}


def test_bad_style_and_options_are_refused():
    frame = PoseFrame(64, 64, _person()[None])
    with pytest.raises(ValueError, match="openpose, unianimate, one_to_all"):
        render.render_pose(frame, "dwpose")
    with pytest.raises(ValueError, match="valid options: without_face, face_change, head_change"):
        render.render_pose(frame, "one_to_all", draw_face=False)
    with pytest.raises(ValueError, match="swap_rb"):
        render.render_poses([frame], "unianimate", swap_rgb=True)
    with pytest.raises(ValueError, match="True or False"):
        render.render_pose(frame, "openpose", draw_face="no")
    with pytest.raises(ValueError, match="PoseFrame"):
        render.render_pose({"people": []}, "openpose")
    with pytest.raises(ValueError, match="width"):
        render.render_pose(frame, "openpose", width=0)
    with pytest.raises(ValueError, match="height"):
        render.render_pose(frame, "openpose", height=12.5)
    with pytest.raises(ValueError, match="threads"):
        render.render_poses([frame], threads=0)
    with pytest.raises(ValueError, match="frame 1"):
        render.render_poses([frame, None])


def test_render_poses_matches_render_pose_and_threads_agree():
    frames = [PoseFrame(160, 96, _person(i, spread=0.3)[None]) for i in range(6)]
    for style in render.STYLES:
        single = np.stack([render.render_pose(f, style) for f in frames])
        assert single.any()
        for threads in (1, 2, 4):
            batch = render.render_poses(frames, style, threads=threads)
            w, h = render.unianimate_canvas(160, 96) if style == "unianimate" else (160, 96)
            assert batch.shape == (6, h, w, 3) and batch.dtype == np.uint8
            np.testing.assert_array_equal(batch, single)


def test_render_size_and_mixed_canvases():
    a, b = PoseFrame(100, 60, _person()[None]), PoseFrame(200, 120, _person()[None])
    assert render.render_pose(a, "openpose").shape == (60, 100, 3)
    with pytest.raises(ValueError, match="pass width and height"):
        render.render_poses([a, b])
    both = render.render_poses([a, b], "openpose", width=200, height=120)
    np.testing.assert_array_equal(both[0], both[1])  # normalised coordinates: same drawing
    assert render.render_poses([], width=8, height=4).shape == (0, 4, 8, 3)
    with pytest.raises(ValueError, match="no frames"):
        render.render_poses([])


@pytest.mark.parametrize("style", render.STYLES)
def test_out_of_canvas_nan_and_empty_never_crash(style):
    people = np.stack([_person(1, spread=50.0), _person(2, spread=1e9)])
    people[0, 5:40, 0] = np.nan
    people[1, 60:70, 1] = np.inf
    image = render.render_pose(PoseFrame(96, 64, people), style, 96, 64)
    assert image.shape == (64, 96, 3)
    loud = _person(4)
    loud[:, 2] = 1.7  # scores above 1 (some detectors): colours saturate, no crash
    assert render.render_pose(PoseFrame(512, 512, loud[None]), style).any()
    edited = PoseFrame(96, 64, _person(3)[None])
    edited.people[0, :10, :2] = np.nan  # edited after construction: still drawn without those points
    with np.errstate(all="raise"):
        assert render.render_pose(edited, style, 96, 64).shape == (64, 96, 3)
    empty = render.render_pose(PoseFrame(96, 64), style)
    assert not empty.any()
    only_far = np.zeros((1, 134, 3), np.float32)
    only_far[0, :, :2], only_far[0, :, 2] = 5e7, 1.0
    assert not render.render_pose(PoseFrame(96, 64, only_far), style).any()


def test_multi_person_policy():
    first, second = _person(3), _person(4)
    two = PoseFrame(128, 128, np.stack([first, second]))
    one = PoseFrame(128, 128, first[None])
    for style in ("unianimate", "one_to_all"):  # the official code keeps the first person
        np.testing.assert_array_equal(render.render_pose(two, style), render.render_pose(one, style))
    assert (render.render_pose(two, "openpose") != render.render_pose(one, "openpose")).any()


def _single_point(index: int, score: float, size: int = 64) -> PoseFrame:
    pts = np.zeros((1, 134, 3), np.float32)
    pts[0, index] = (0.5, 0.5, score)
    return PoseFrame(size, size, pts)


def test_visibility_thresholds():
    # openpose keeps >= 0.3; UniAnimate body needs > 0.3 but hands >= 0.3; One-to-All body any > 0
    assert render.render_pose(_single_point(0, 0.3), "openpose").any()
    assert not render.render_pose(_single_point(0, 0.29), "openpose").any()
    assert not render.render_pose(_single_point(0, 0.3), "unianimate").any()
    assert render.render_pose(_single_point(0, 0.31), "unianimate").any()
    assert render.render_pose(_single_point(100, 0.3), "unianimate").any()
    # (One-to-All draws on a 2160 px canvas and resizes without smoothing: small canvases can
    # miss a lone dot entirely, as the official drawer does; 512 px keeps it.)
    assert render.render_pose(_single_point(0, 0.05, 512), "one_to_all").any()
    assert render.render_pose(_single_point(100, 0.3, 512), "one_to_all").any()
    assert not render.render_pose(_single_point(100, 0.29, 512), "one_to_all").any()


def test_openpose_options():
    person = _person(5)
    frame = PoseFrame(256, 256, person[None])
    full = render.render_pose(frame, "openpose")
    white = lambda im: int((im == 255).all(axis=-1).sum())  # noqa: E731  face dots are pure white
    assert white(full) > 0 and white(render.render_pose(frame, "openpose", draw_face=False)) == 0
    # switching a part off equals removing its points
    for option, part in (("draw_hands", slice(92, 134)), ("draw_face", slice(24, 92))):
        removed = person.copy()
        removed[part, 2] = 0
        off = render.render_pose(frame, "openpose", **{option: False})
        np.testing.assert_array_equal(off, render.render_pose(PoseFrame(256, 256, removed[None]), "openpose"))
        assert (off != full).any()
    hands_only = render.render_pose(frame, "openpose", draw_body=False, draw_face=False)
    assert hands_only.any() and not (hands_only == (153, 0, 0)).all(axis=-1).any()
    assert not render.render_pose(frame, "openpose", draw_body=False, draw_face=False, draw_hands=False).any()
    body = render.render_pose(frame, "openpose", draw_hands=False, draw_face=False)
    xinsr = render.render_pose(frame, "openpose", draw_hands=False, draw_face=False, xinsr_stick_scaling=True)
    np.testing.assert_array_equal(body, xinsr)  # max side < 500: scale 1
    big = PoseFrame(768, 512, _person(5)[None])
    thin = render.render_pose(big, "openpose", draw_hands=False, draw_face=False)
    thick = render.render_pose(big, "openpose", draw_hands=False, draw_face=False, xinsr_stick_scaling=True)
    assert thick.any(axis=-1).sum() > 1.3 * thin.any(axis=-1).sum()


def test_unianimate_options_and_toes():
    person = _person(6)
    frame = PoseFrame(256, 256, person[None])
    raw = {"official_canvas": False}  # the drawer itself, at the frame's canvas
    swapped = render.render_pose(frame, "unianimate", **raw)
    np.testing.assert_array_equal(render.render_pose(frame, "unianimate", swap_rb=False, **raw), swapped[..., ::-1])
    with_face = render.render_pose(frame, "unianimate", draw_face=True, **raw)
    white = lambda im: int((im == 255).all(axis=-1).sum())  # noqa: E731
    assert white(with_face) > white(swapped)
    assert not render.render_pose(frame, "unianimate", draw_body=False, draw_hands=False).any()
    # the left toe point (mean of big and small toe) needs both toes visible
    toe = ((person[18, :2] + person[19, :2]) / 2 * 256).astype(int)
    toe_color = (255, 255, 170)  # (170, 255, 255) after the R/B swap, the left-toe joint colour
    assert (swapped[toe[1], toe[0]] == toe_color).all()
    hidden = person.copy()
    hidden[19, 2] = 0.3  # detected with a low score: dropped, as official
    no_toe = render.render_pose(PoseFrame(256, 256, hidden[None]), "unianimate", **raw)
    assert not (no_toe == toe_color).all(axis=-1).any()
    # a detector without small toes at all (mediapipe: (0, 0), score 0): the big toe carries the toe limb
    mp_like = person.copy()
    mp_like[[19, 22]] = 0.0
    big = (mp_like[18, :2] * 256).astype(int)
    with_big_toe = render.render_pose(PoseFrame(256, 256, mp_like[None]), "unianimate", **raw)
    assert (with_big_toe[big[1], big[0]] == toe_color).all()


def test_one_to_all_options():
    frame = PoseFrame(128, 192, _person(7)[None])
    default = render.render_pose(frame, "one_to_all")
    no_face = render.render_pose(frame, "one_to_all", without_face=True)
    face_change = render.render_pose(frame, "one_to_all", face_change=True)
    head = render.render_pose(frame, "one_to_all", head_change=True)
    assert default.sum() > face_change.sum() > no_face.sum()
    assert (head != default).any()
    # without the face, a face-only person draws nothing; jaw (0-16) and nose (27-35) never draw
    face_only = np.zeros((1, 134, 3), np.float32)
    face_only[0, 24:92] = _person(8)[24:92]
    assert render.render_pose(PoseFrame(128, 192, face_only), "one_to_all").any()
    assert not render.render_pose(PoseFrame(128, 192, face_only), "one_to_all", without_face=True).any()
    jaw_nose = np.zeros((1, 134, 3), np.float32)
    for i in list(range(17)) + list(range(27, 36)):
        jaw_nose[0, 24 + i] = (0.5, 0.5, 0.9)
    assert not render.render_pose(PoseFrame(128, 192, jaw_nose), "one_to_all").any()


@pytest.mark.parametrize("size", [(832, 480), (480, 832), (512, 768), (96, 64), (600, 900), (2400, 2400),
                                  (3840, 2160), (4320, 4320)])
def test_one_to_all_cropped_drawing_equals_full_canvas(size):
    """The speed path (draw and resize only the region holding drawing) is bit-identical."""
    w, h = size
    cw, ch = render._one_to_all_canvas_size(w, h)
    dyadic = size not in ((600, 900), (2400, 2400))  # 2160/600 = 18/5: falls back to the full canvas
    assert (render._crop_grid(w, cw) is not None and render._crop_grid(h, ch) is not None) == dyadic
    opts = render.style_options("one_to_all")
    for seed in range(3):
        people = render._bounded(PoseFrame(w, h, _person(seed, spread=0.6 * seed)[None]).people)
        fast = np.zeros((h, w, 3), np.uint8)
        full = np.zeros((h, w, 3), np.uint8)
        render._draw_one_to_all(fast, people, opts, crop=True)
        render._draw_one_to_all(full, people, opts, crop=False)
        assert full.any()
        np.testing.assert_array_equal(fast, full)


def test_hand_colours_equal_matplotlib():
    colors = pytest.importorskip("matplotlib.colors")
    for ie, rgb in enumerate(render._HSV):
        assert tuple(colors.hsv_to_rgb([ie / 20.0, 1.0, 1.0])) == rgb


def test_one_to_all_draws_right_hand_then_left():
    """hands[0] (drawn first) is the right hand: where both hands overlap, the left one shows."""
    pts = np.zeros((1, 134, 3), np.float32)
    hand = _person(9)[92:113, :2]
    pts[0, 92:113, :2], pts[0, 92:113, 2] = hand, 0.9    # left hand, dots (0, 0, 229)
    pts[0, 113:134, :2], pts[0, 113:134, 2] = hand, 0.5  # right hand, dots (0, 0, 127)
    image = render.render_pose(PoseFrame(512, 512, pts), "one_to_all")
    x, y = (hand[0] * 512).astype(int)
    assert tuple(image[y, x]) == (0, 0, 229)


def test_one_to_all_canvas_reuse_is_clean():
    """render_poses reuses supersampled canvases; every frame still equals a fresh render."""
    for size in ((600, 900), (160, 96)):  # full-canvas path, cropped path
        frames = [PoseFrame(*size, _person(i, spread=0.3 * i)[None]) for i in range(3)]
        batch = render.render_poses(frames, "one_to_all", threads=1, face_change=True)
        for frame, image in zip(frames, batch):
            np.testing.assert_array_equal(image, render.render_pose(frame, "one_to_all", face_change=True))

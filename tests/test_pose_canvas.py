"""UniAnimate's pose images at the model input: the official fixed canvas, whatever the reference size.

The official scripts draw every pose on a 768x512 (HxW) canvas and resize it (PIL bilinear) to
the model size, so a limb is as thick at the model input for a 512x768 reference as for a
12-megapixel photo. Checked on the real path: Align Poses -> Render Poses (width/height 0) ->
the UniAnimate sampler's resize, against the official drawing resized the official way.
"""
import cv2
import numpy as np
import pytest

from poseanimate.models.unianimate import pipeline
from poseanimate.nodes.pose import AlignPoses, RenderPoses
from poseanimate.pose import keypoints as kp
from poseanimate.pose import measure, render
from poseanimate.pose.sample_media import standing_person

REFERENCE_SIZES = [(512, 768), (1080, 1920), (3024, 4032)]
OFFICIAL_480P = pipeline.OFFICIAL_SIZES["480p"]  # (W, H) the official 480p scripts use
UPPER_ARM, THIGH, HAND_BONE = (2, 3), (8, 9), (92 + 6, 92 + 7)  # right upper arm, right thigh, a left finger bone


def _model_input_pose_image(ref_size, model_size=None):
    """The real path: Align Poses (unianimate) -> Render Poses (0 x 0) -> the sampler's resize."""
    ref_w, ref_h = ref_size
    reference = kp.frames_to_pose_keypoint([kp.PoseFrame(ref_w, ref_h, standing_person()[None])])
    driving = kp.frames_to_pose_keypoint([kp.PoseFrame(1080, 1920, standing_person(0.8, 0.05)[None])])
    aligned = AlignPoses().align(driving, reference, "unianimate", 0)[0]
    (images,) = RenderPoses().render(aligned, "unianimate", 0, 0, True, True, False)
    width, height = model_size or pipeline.output_size(ref_w, ref_h, "480p")
    uint8 = np.clip(np.rint(images.numpy() * 255), 0, 255).astype(np.uint8)
    return pipeline.resize_frames(uint8, width, height)[0], kp.frames_from_pose_keypoint(aligned)[0]


def _official_model_input(frame: kp.PoseFrame, model_size=OFFICIAL_480P):
    """run_align_pose.draw_pose at H=768, W=512 (our drawer is pixel-exact to it, see
    test_pose_render.py), then the inference script's PIL bilinear resize to the model size."""
    canvas = render.render_pose(frame, "unianimate", 512, 768, official_canvas=False)
    return pipeline.resize_frames(canvas[None], *model_size)[0]


def _widths(image, frame: kp.PoseFrame):
    h, w = image.shape[:2]
    pts = frame.people[0][:, :2] * (w, h)
    return {name: measure.line_width(image, pts[a], pts[b])
            for name, (a, b) in (("upper_arm", UPPER_ARM), ("thigh", THIGH), ("hand", HAND_BONE))}


def test_line_width_measures_what_was_drawn():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, 17:24, 0] = 255  # a 7 px vertical bar
    assert measure.line_width(image, (20, 10), (20, 90)) == pytest.approx(7, abs=0.1)
    assert measure.line_width(image, (60, 10), (60, 90)) == 0.0
    doubled = cv2.resize(image, (200, 200), interpolation=cv2.INTER_LINEAR)
    assert measure.line_width(doubled, (40, 20), (40, 180)) == pytest.approx(14, abs=0.6)


@pytest.mark.parametrize("ref_size", REFERENCE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_limb_and_hand_widths_at_the_model_input_equal_the_official(ref_size):
    """At the official 480p size the pose image is the official one, pixel for pixel."""
    ours, frame = _model_input_pose_image(ref_size, OFFICIAL_480P)
    official = _official_model_input(frame)
    np.testing.assert_array_equal(ours, official)
    got, want = _widths(ours, frame), _widths(official, frame)
    assert want["upper_arm"] > 7 and want["hand"] > 1.5  # the official 9 px limbs and 2 px hand lines, at 480/512
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=1.0), name


def test_widths_follow_the_model_size_not_the_reference_size():
    """Through the sampler's own 480p size for each reference: the widths are the official canvas's
    widths scaled by the model size (before: 10 px from a 512x768 reference, 2 px from 3024x4032)."""
    for size in REFERENCE_SIZES:
        image, frame = _model_input_pose_image(size)
        model_w, model_h = image.shape[1], image.shape[0]
        official = _widths(_official_model_input(frame, (model_w, model_h)), frame)
        for name, value in _widths(image, frame).items():
            assert value == pytest.approx(official[name], abs=1.0), (size, name)
            assert value > (6 if name != "hand" else 1.5), (size, name, value)


def test_landscape_outputs_draw_on_the_transposed_canvas():
    frame = kp.PoseFrame(1920, 1080, standing_person(0.5)[None])
    image = render.render_pose(frame, "unianimate")
    assert image.shape == (512, 768, 3)
    assert render.working_size("unianimate", 1920, 1080) == (768, 512)
    assert render.working_size("unianimate", 1080, 2179) == (512, 768)

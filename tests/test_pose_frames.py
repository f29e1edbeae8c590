"""Frame handling: input coercion (RGBA, grayscale, float, single image), selection, aspect fitting."""
import numpy as np
import pytest
import torch

from poseanimate.pose import frames


def test_rgba_grayscale_float_and_single_image_are_accepted():
    rgba = torch.rand(2, 8, 6, 4)
    out = frames.to_uint8_rgb(rgba)
    assert out.shape == (2, 8, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.rint(rgba[..., :3].numpy() * 255).astype(np.uint8))
    gray = np.full((8, 6, 1), 0.5, np.float32)
    g = frames.to_uint8_rgb(gray)
    assert g.shape == (1, 8, 6, 3) and np.all(g == 128)
    plain = np.full((5, 7), 200, np.uint8)
    assert frames.to_uint8_rgb(plain).shape == (1, 5, 7, 3)


def test_empty_batch_and_bad_shape_are_clear_errors():
    with pytest.raises(frames.FrameError, match="empty"):
        frames.to_uint8_rgb(torch.zeros(0, 8, 8, 3))
    with pytest.raises(frames.FrameError, match="channels"):
        frames.to_uint8_rgb(np.zeros((2, 3, 8, 8, 3)))


def test_select_indices():
    assert frames.select_indices(10, 2) == [0, 2, 4, 6, 8]
    assert frames.select_indices(10, 3, max_frames=2, skip_first=1) == [1, 4]
    with pytest.raises(frames.FrameError):
        frames.select_indices(3, 1, skip_first=5)
    with pytest.raises(frames.FrameError):
        frames.select_indices(3, 0)


def test_sizes_are_multiples_of_16_on_the_reference_aspect():
    assert frames.size_for_resolution(480, 832, "480p") == (480, 832)
    w, h = frames.size_for_resolution(1000, 1500, "720p")
    assert w % 16 == 0 and h % 16 == 0 and w == 720 and abs(h / w - 1.5) < 0.03
    with pytest.raises(frames.FrameError, match="resolution"):
        frames.size_for_resolution(10, 10, "1080p")


def test_prepare_driving_crops_to_reference_aspect():
    video = np.zeros((9, 100, 200, 3), np.uint8)
    video[:, :, 90:110] = 255  # a bright centre column survives a centre crop
    out = frames.prepare_driving(video, reference_size=(300, 500), every_nth=2)
    assert out.shape == (5, 496, 288, 3)
    assert out[:, :, 144].mean() > 200 and out[:, :, 0].mean() < 10


def test_one_frame_video_works():
    out = frames.prepare_driving(np.zeros((1, 64, 64, 3), np.uint8), (64, 64))
    assert out.shape == (1, 64, 64, 3)


def test_fit_modes():
    img = np.full((1, 50, 100, 3), 255, np.uint8)
    pad = frames.fit_frames(img, 64, 64, "pad")
    assert pad[0, 0, 32].sum() == 0 and pad[0, 32, 32].sum() > 0
    assert frames.fit_frames(img, 64, 64, "stretch").min() == 255
    with pytest.raises(frames.FrameError):
        frames.fit_frames(img, 64, 64, "zoom")

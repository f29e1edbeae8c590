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


def test_prepare_driving_crops_to_reference_aspect_without_upsizing():
    video = np.zeros((9, 100, 200, 3), np.uint8)
    video[:, :, 90:110] = 255  # a bright centre column survives a centre crop
    out = frames.prepare_driving(video, reference_size=(300, 500), every_nth=2)
    assert out.shape == (5, 100, 60, 3)  # the 3:5 crop at the video's own pixels, not the reference's 300x500
    assert out[:, :, 30].mean() > 200 and out[:, :, 0].mean() < 10
    # an explicit short side is honoured below the crop's own size, never above it
    assert frames.prepare_driving(video, (300, 500), short_side=48).shape == (9, 80, 48, 3)
    assert frames.prepare_driving(video, (300, 500), short_side=512).shape == (9, 100, 60, 3)


def test_prepare_driving_image_is_a_view_when_nothing_is_resampled():
    video = torch.rand(12, 64, 96, 3)
    crop = frames.prepare_driving_image(video, (300, 500), every_nth=3)
    assert crop.shape == (4, 64, 38, 3) and crop.untyped_storage().data_ptr() == video.untyped_storage().data_ptr()
    torch.testing.assert_close(crop[1], video[3, :, 29:67])
    keep = frames.prepare_driving_image(video, (300, 500), mode="keep", max_frames=5, skip_first=2)
    assert keep.shape == (5, 64, 96, 3) and torch.equal(keep[0], video[2])
    odd = frames.prepare_driving_image(torch.rand(2, 65, 97, 3), None, mode="keep")
    assert odd.shape == (2, 64, 96, 3)  # sides made even by trimming, not resampled
    small = frames.prepare_driving_image(video, (300, 500), short_side=32)
    assert small.shape == (12, 48, 32, 3) and small.dtype == torch.float32 and small.is_contiguous()


def test_uint8_conversion_never_makes_a_float_copy_of_the_video():
    """to_uint8_rgb converts a few frames at a time: a 160-frame float video costs its uint8 result."""
    import tracemalloc

    video = np.random.default_rng(0).random((160, 32, 32, 3), dtype=np.float32)
    tracemalloc.start()
    out = frames.to_uint8_rgb(video)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.shape == (160, 32, 32, 3)
    np.testing.assert_array_equal(out, np.rint(video * 255).astype(np.uint8))
    assert peak < out.nbytes + video.nbytes // 4, peak


def test_too_large_allocations_are_refused_before_they_happen(monkeypatch):
    monkeypatch.setattr(frames, "available_memory", lambda: 2**20)
    with pytest.raises(MemoryError, match=r"Prepare Driving Video: 40 frames at 48x64 need .* only 0.0 GiB"):
        frames.prepare_driving_image(torch.zeros(40, 64, 48, 3), short_side=48, mode="stretch", reference_size=(96, 128))
    with pytest.raises(MemoryError, match="Render Poses"):
        frames.image_from_chunks(iter(()), 300, 1920, 1080, "Render Poses")


def test_odd_sizes_are_named_errors():
    with pytest.raises(frames.FrameError, match=r"Render Poses: 1081x2179 has an odd side.*libx264.*1080x2178"):
        frames.check_even_size(1081, 2179, "Render Poses")
    frames.check_even_size(1080, 2178, "Render Poses")


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

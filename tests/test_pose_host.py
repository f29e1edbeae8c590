"""Model names from a workflow resolve only inside the model folders."""
import pytest

from poseanimate.nodes import host


def test_resolve_and_list_inside_the_folder(models_dir):
    (models_dir / "pose_models" / "sub").mkdir(parents=True)
    (models_dir / "pose_models" / "sub" / "a.onnx").write_bytes(b"x")
    (models_dir / "pose_models" / "notes.txt").write_text("x")
    assert host.list_models("pose_models") == ["sub/a.onnx"]
    assert host.resolve_model("pose_models", "sub/a.onnx").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x.onnx", ""])
def test_paths_outside_are_refused(models_dir, name):
    (models_dir / "pose_models").mkdir()
    with pytest.raises(host.ModelFileError):
        host.resolve_model("pose_models", name)


def test_missing_file_names_the_folder(models_dir):
    with pytest.raises(host.ModelFileError, match="pose_models"):
        host.resolve_model("pose_models", "yolox_l.onnx")


def test_progress_and_interrupt_are_harmless_without_comfyui():
    cb = host.step_callback(3)
    for _ in range(3):
        cb()
    host.free_memory()


def test_gguf_files_are_listed_under_comfyui_too(models_dir, monkeypatch):
    """ComfyUI's diffusion_models list filters by its own extensions (no .gguf): the pack adds them."""
    import sys
    import types

    folder = models_dir / "diffusion_models"
    (folder / "sub").mkdir(parents=True)
    for name in ("wan.safetensors", "sub/wan-Q8_0.gguf", "notes.txt"):
        (folder / name).write_bytes(b"x")
    fake = types.SimpleNamespace(get_filename_list=lambda kind: ["wan.safetensors"],
                                 get_folder_paths=lambda kind: [str(folder)])
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert host.list_models("diffusion_models") == ["sub/wan-Q8_0.gguf", "wan.safetensors"]
    assert host.list_models("diffusion_models", {".safetensors"}) == ["wan.safetensors"]

"""Video files: round trips through mp4 at widths decord can and cannot read, errors, the folder dataset."""

from __future__ import annotations

import os

import pytest
import torch

import streamr1.data.videos as videos_mod
from streamr1.data.videos import VideoFolderDataset, read_video, write_video
from streamr1.toy.world import ToyAttributes, render


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).pow(2).mean().item()  # on the [0, 1] scale
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


def _clip(width: int, height: int = 32, frames: int = 8, seed: int = 0) -> torch.Tensor:
    """A toy clip cropped to ``height x width``."""
    big = render(ToyAttributes("circle", "yellow", "right", background="light"), seed=seed, frames=frames,
                 size=max(width, height))
    return big[..., :height, :width].contiguous()


@pytest.fixture
def backends(monkeypatch):
    """Records which reader each call used."""
    used: list[str] = []
    real_decord, real_pyav = videos_mod._read_decord, videos_mod._read_pyav

    def decord(path):
        used.append("decord")
        return real_decord(path)

    def pyav(path):
        used.append("pyav")
        return real_pyav(path)

    monkeypatch.setattr(videos_mod, "_read_decord", decord)
    monkeypatch.setattr(videos_mod, "_read_pyav", pyav)
    return used


@pytest.mark.parametrize(("width", "backend"), [(48, "pyav"), (64, "decord")])
def test_round_trip_at_widths(tmp_path, backends, width, backend):
    video = _clip(width)
    path = str(tmp_path / f"w{width}.mp4")
    write_video(path, video, fps=8)
    back = read_video(path)
    assert back.shape == video.shape and back.dtype == torch.float32
    assert back.min() >= -1 and back.max() <= 1
    assert _psnr(back, video) > 25
    assert backends == [backend]  # width 48 skips decord (decord issue #336); 64 uses it


def test_decord_failure_falls_back_to_pyav(tmp_path, monkeypatch):
    path = str(tmp_path / "v.mp4")
    write_video(path, _clip(64))

    def broken(_path):
        raise RuntimeError("DECORDArrayCopyFromTo: The size must exactly match")

    monkeypatch.setattr(videos_mod, "_read_decord", broken)
    assert _psnr(read_video(path), _clip(64)) > 25
    with pytest.raises(ValueError, match="DECORDArrayCopyFromTo"):
        read_video(path, backend="decord")


def test_frame_sampling_and_resize(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, _clip(64, height=64, frames=10))
    full = read_video(path)
    assert full.shape == (10, 3, 64, 64)
    sub = read_video(path, num_frames=4, size=32)
    assert sub.shape == (4, 3, 32, 32)
    assert torch.allclose(sub[0], torch.nn.functional.interpolate(full[:1], size=(32, 32), mode="bilinear",
                                                                  antialias=True)[0], atol=1e-5)
    assert read_video(path, num_frames=16, size=(16, 24)).shape == (16, 3, 16, 24)  # repeats frames


def test_bad_files_name_the_file_and_the_fix(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(missing)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mp4.*empty \(0 bytes\).*Re-create"):
        read_video(str(empty))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=r"corrupt\.mp4.*corrupt or not a video.*Re-encode"):
        read_video(str(corrupt))


def test_write_is_atomic_and_validates(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "v.mp4"
    write_video(str(path), _clip(32))
    assert path.exists() and os.listdir(path.parent) == ["v.mp4"]
    before = path.read_bytes()

    import av

    def boom(*args, **kwargs):
        raise RuntimeError("encoder died")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", boom)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(str(path), _clip(32, seed=1))
    assert path.read_bytes() == before and os.listdir(path.parent) == ["v.mp4"]  # old file intact, no temp left
    monkeypatch.undo()
    with pytest.raises(ValueError, match="even"):
        write_video(str(tmp_path / "odd.mp4"), torch.zeros(2, 3, 31, 32))
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        write_video(str(tmp_path / "bad.mp4"), torch.zeros(2, 32, 32))


def test_video_folder_dataset(tmp_path):
    root = tmp_path / "vids"
    for i, name in enumerate(["b.mp4", "a.mp4", "sub/c.mp4"]):
        write_video(str(root / name), _clip(32, seed=i))
        (root / name).with_suffix(".txt").write_text(f"prompt {name}\n")
    ds = VideoFolderDataset(str(root), num_frames=4, size=16)
    assert len(ds) == 3
    assert [os.path.relpath(p, root) for p in ds.paths] == ["a.mp4", "b.mp4", os.path.join("sub", "c.mp4")]
    item = ds[1]
    assert item["video"].shape == (4, 3, 16, 16) and item["prompt"] == "prompt b.mp4" and item["path"].endswith("b.mp4")
    # one prompt a line, in sorted order
    lines = tmp_path / "prompts.txt"
    lines.write_text("first\nsecond\n\nthird\n")
    assert VideoFolderDataset(str(root), prompts_file=str(lines)).prompts == ["first", "second", "third"]
    # path<TAB>prompt lines
    tabbed = tmp_path / "tabbed.txt"
    tabbed.write_text("sub/c.mp4\tC\na.mp4\tA\nb.mp4\tB\n")
    assert VideoFolderDataset(str(root), prompts_file=str(tabbed)).prompts == ["A", "B", "C"]
    lines.write_text("only one\n")
    with pytest.raises(ValueError, match="1 prompts for 3 videos"):
        VideoFolderDataset(str(root), prompts_file=str(lines))
    os.remove(root / "a.txt")
    with pytest.raises(ValueError, match="no prompt.*a.mp4"):
        VideoFolderDataset(str(root))
    assert VideoFolderDataset(str(root), require_prompts=False).prompts[0] == ""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no videos"):
        VideoFolderDataset(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolderDataset(str(tmp_path / "missing"))


def test_oracle_survives_an_mp4_round_trip(tmp_path):
    """Reward calibration reads videos back from mp4: the oracle's classes must hold after H.264 (yuv420p)."""
    from streamr1.toy.oracle import classify_mode, oracle_scores
    from streamr1.toy.world import MODES, sample_attributes

    g = torch.Generator().manual_seed(3)
    for mode in MODES:
        attrs = [sample_attributes(g) for _ in range(6)]
        back = []
        for i, a in enumerate(attrs):
            path = str(tmp_path / f"{mode}{i}.mp4")
            write_video(path, render(a, mode, seed=500 + i))
            back.append(read_video(path))
        assert classify_mode(oracle_scores(torch.stack(back), attrs)) == [mode] * 6

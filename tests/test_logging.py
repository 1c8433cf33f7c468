"""Media in any logger: TensorBoard, wandb (offline), CSV accept videos, images and histograms; others skip once."""

from __future__ import annotations

import csv
import glob
import os
import warnings
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import Logger

import streamr1.logging as media
from streamr1.logging import log_histogram, log_image, log_media, log_video

VIDEO = torch.linspace(-1, 1, 4 * 3 * 8 * 8).view(4, 3, 8, 8)
IMAGE = torch.rand(3, 10, 12)
VALUES = torch.tensor([1.0, 2.0, 3.0, 4.0])


def test_tensorboard_gets_an_animated_gif_an_image_and_a_histogram(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    trainer = SimpleNamespace(loggers=[logger], is_global_zero=True)
    assert log_video(trainer, "val/sample_0", VIDEO, 3) == {"TensorBoardLogger[0]": "logged"}
    log_image(trainer, "weights/saliency_heatmap", IMAGE, 3)
    log_histogram(trainer, "weights/W_inter", VALUES, 5)
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    (gif,) = acc.Images("val/sample_0")
    assert gif.step == 3 and gif.encoded_image_string[:6] == b"GIF89a"
    assert (gif.height, gif.width) == (128, 128)  # 8x8 frames enlarged 16x to be visible
    (img,) = acc.Images("weights/saliency_heatmap")
    assert (img.height, img.width) == (10, 12)
    (hist,) = acc.Histograms("weights/W_inter")
    assert hist.step == 5 and hist.histogram_value.num == 4 and hist.histogram_value.sum == 10.0


def test_csv_keeps_media_files_and_histogram_statistics(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    log_media(logger, "video", "val/sample_0", VIDEO, 7)
    log_media(logger, "image", "weights/saliency_heatmap", IMAGE, 7)
    log_media(logger, "histogram", "weights/W_inter", VALUES, 7)
    logger.save()
    gif = os.path.join(logger.log_dir, "media", "val_sample_0", "step_00000007.gif")
    png = os.path.join(logger.log_dir, "media", "weights_saliency_heatmap", "step_00000007.png")
    assert open(gif, "rb").read(6) == b"GIF89a" and open(png, "rb").read(4) == b"\x89PNG"
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 4
    (row,) = list(csv.DictReader(open(os.path.join(logger.log_dir, "metrics.csv"))))
    # mean 2.5, unbiased std sqrt(5/3), min 1, max 4 of [1, 2, 3, 4]
    assert float(row["weights/W_inter/mean"]) == 2.5 and float(row["weights/W_inter/min"]) == 1.0
    assert float(row["weights/W_inter/max"]) == 4.0
    assert float(row["weights/W_inter/std"]) == pytest.approx((5 / 3) ** 0.5)
    assert int(row["step"]) == 7


class PlainLogger(Logger):
    """A logger with no media support (scalars only)."""

    name, version = "plain", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass


def test_a_logger_without_media_skips_with_one_notice_per_kind(monkeypatch):
    monkeypatch.setattr(media, "_NOTIFIED", set())
    trainer = SimpleNamespace(loggers=[PlainLogger()], is_global_zero=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = log_video(trainer, "val/sample_0", VIDEO, 0)
        log_video(trainer, "val/sample_1", VIDEO, 0)
        log_histogram(trainer, "weights/W_inter", VALUES, 0)
    assert first == {"PlainLogger[0]": "skipped: PlainLogger has no way to show videos (TensorBoard, wandb and CSV "
                                       "loggers do)"}
    notes = [str(w.message) for w in caught if "streamr1 media" in str(w.message)]
    assert len(notes) == 2 and "'val/sample_0' and later videos" in notes[0] and "histograms" in notes[1]


def test_only_rank_zero_logs_and_bad_input_is_refused(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    assert log_video(SimpleNamespace(loggers=[logger], is_global_zero=False), "v", VIDEO, 0) == {}
    assert not os.path.exists(os.path.join(logger.log_dir, "media"))
    with pytest.raises(ValueError, match="Unknown media kind 'audio'"):
        log_media(logger, "audio", "a", VALUES, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"video must be \[T, 3, H, W\]"):
        log_video(logger, "v", torch.zeros(3, 8, 8), 0)
    with pytest.raises(ValueError, match=r"image must be \[3, H, W\]"):
        log_image(logger, "i", torch.zeros(8, 8), 0)


def test_wandb_offline_gets_the_video_image_and_histogram(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="streamr1-test")
    trainer = SimpleNamespace(loggers=[logger], is_global_zero=True)
    try:
        assert log_video(trainer, "val/sample_0", VIDEO, 2) == {"WandbLogger[0]": "logged"}
        log_image(trainer, "weights/saliency_heatmap", IMAGE, 2)
        log_histogram(trainer, "weights/W_inter", VALUES, 2)
        summary = dict(logger.experiment.summary)
        run_dir = logger.experiment.dir
    finally:
        logger.experiment.finish()
    assert summary["val/sample_0"]["_type"] == "video-file"
    assert summary["weights/saliency_heatmap"]["_type"] == "image-file"
    assert summary["weights/W_inter"]["_type"] == "histogram"
    assert summary["trainer/global_step"] == 2
    assert glob.glob(os.path.join(run_dir, "media", "videos", "val", "*.gif"))
    assert glob.glob(os.path.join(run_dir, "media", "images", "weights", "*.png"))


def test_validation_samples_reach_every_logger(tmp_path):
    """DMDModule's validation GIFs go through log_video: a CSV logger keeps them as files, TensorBoard as images."""
    import lightning.pytorch as pl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from streamr1.data import PromptDataModule
    from tests.helpers import tiny_module

    csv_logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    tb_logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=[csv_logger, tb_logger], enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1)
    module = tiny_module(log_val_videos=2)
    trainer.validate(module, datamodule=PromptDataModule(prompts=["a red circle", "a blue square"], batch_size=2))
    for i in (0, 1):
        gif = os.path.join(csv_logger.log_dir, "media", f"val_sample_{i}", "step_00000000.gif")
        assert open(gif, "rb").read(6) == b"GIF89a"
    tb_logger.experiment.flush()
    acc = EventAccumulator(tb_logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert {"val/sample_0", "val/sample_1"} <= set(acc.Tags()["images"])

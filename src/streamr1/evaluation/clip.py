"""CLIP score of videos with a local open_clip model, aggregated by torchmetrics (syncs across ranks).

``torchmetrics.multimodal.CLIPScore`` (1.9) loads only Hugging Face ``openai/...`` names and breaks with
transformers 5 (NOTES.md); it does accept a callable returning ``(model, processor)`` with the Hugging Face CLIP API.
:func:`open_clip_for_torchmetrics` gives exactly that for any open_clip model (real weights from a local file or a
``local-dir:`` folder, or a random tiny config in tests), and :class:`VideoCLIPScore` computes the same number as
``CLIPScore`` over every frame of every video (Hessel et al. 2021, "CLIPScore", arXiv 2104.08718, without the
``w = 2.5`` rescaling, as torchmetrics does)::

    score = max(mean over all frames f of all videos of 100 * cos(E_image(f), E_text(prompt)), 0)

while also returning each video's own mean (for the per-video records). Frames are preprocessed like open_clip's
evaluation transform: resize the shorter side to the model's input size (bicubic, antialiased), centre crop, then
the model's mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric


def _preprocess(images: Tensor, size: tuple[int, int], mean: Tensor, std: Tensor) -> Tensor:
    """``[N, 3, H, W]`` in ``[0, 255]`` -> the CLIP input ``[N, 3, S, S]`` (shorter side resize, centre crop, norm)."""
    x = images.float() / 255.0
    h, w = x.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    x = x[..., top:top + size[0], left:left + size[1]]
    return (x - mean.view(1, 3, 1, 1).to(x)) / std.view(1, 3, 1, 1).to(x)


class OpenCLIPModelAdapter(nn.Module):
    """An open_clip model behind the two methods torchmetrics' CLIP score calls (Hugging Face ``CLIPModel`` API)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = SimpleNamespace()  # torchmetrics reads config.text_config when present; open_clip has none

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return self.clip.encode_image(pixel_values)

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.clip.encode_text(input_ids)


class OpenCLIPProcessorAdapter:
    """open_clip's tokenizer and evaluation transform behind the Hugging Face ``CLIPProcessor`` call."""

    def __init__(self, tokenizer: Any, image_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]):
        self.tokenizer, self.image_size = tokenizer, image_size
        self.mean, self.std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def __call__(self, text: Sequence[str] | None = None, images: Sequence[Tensor] | Tensor | None = None,
                 return_tensors: str = "pt", padding: bool = True) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if images is not None:
            batch = images if isinstance(images, Tensor) else torch.stack([torch.as_tensor(i) for i in images])
            out["pixel_values"] = _preprocess(batch, self.image_size, self.mean, self.std)
        if text is not None:
            ids = self.tokenizer([str(t) for t in text])
            out["input_ids"], out["attention_mask"] = ids, (ids != 0).long()
        return out


def open_clip_for_torchmetrics(model_name: str | None = None, pretrained: str | None = None,
                               model_config: dict[str, Any] | None = None, seed: int = 0
                               ) -> tuple[OpenCLIPModelAdapter, OpenCLIPProcessorAdapter]:
    """``(model, processor)`` for ``torchmetrics`` CLIP score from a local open_clip model (nothing downloaded).

    Args:
        model_name: an open_clip architecture (``"ViT-B-32"``, ``"ViT-L-14"``), with ``pretrained`` a local file.
        pretrained: local weights file, or ``local-dir:/folder`` (open_clip_config.json + weights); ``None`` random.
        model_config: an open_clip config dict instead of ``model_name`` (tiny random models in tests).
        seed: seed of a random initialisation (no ``pretrained``): the same model in every run and on every rank.
    """
    from open_clip.model import get_model_preprocess_cfg

    from streamr1.rewards.openclip import OpenCLIPVideoReward, _local_dir_config, _make_tokenizer

    if model_name is None and model_config is None and not (pretrained or "").startswith("local-dir:"):
        raise ValueError("The CLIP score needs `model_name` (e.g. 'ViT-B-32' with `pretrained` a local weights file), "
                         "`model_config`, or `pretrained: local-dir:/folder`.")
    local_dir = pretrained[len("local-dir:"):] if pretrained and pretrained.startswith("local-dir:") else None
    cfg = model_config
    if local_dir is not None and cfg is None:
        cfg = dict(_local_dir_config(local_dir)["model_cfg"])
    tokenizer = _make_tokenizer(model_name, cfg, local_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = OpenCLIPVideoReward._build_clip(model_name, model_config, pretrained).eval().requires_grad_(False)
    pp = get_model_preprocess_cfg(clip)
    size = pp.get("size", getattr(clip.visual, "image_size", 224))
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)[-2:]
    return OpenCLIPModelAdapter(clip), OpenCLIPProcessorAdapter(tokenizer, size, pp["mean"], pp["std"])


class VideoCLIPScore(Metric):
    """torchmetrics' CLIP score over all frames of videos ``[B, T, 3, H, W]`` in ``[-1, 1]`` (see module doc).

    ``frame_scores(video, prompts)`` gives ``[B, T']`` scores (100 x cosine, not clamped; their mean over frames is a
    video's own score), ``update(scores)`` adds them, and ``compute`` returns ``max(mean over all frames seen on all
    ranks, 0)``, equal to ``torchmetrics.multimodal.CLIPScore`` fed the same frames (tested).

    Args:
        model, processor: from :func:`open_clip_for_torchmetrics` (or any Hugging Face CLIP model and processor).
        frames: frames scored per video, evenly spaced (``None``: all).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, model: nn.Module, processor: Any, frames: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model, self.processor, self.frames = model, processor, frames
        self.add_state("score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def frame_scores(self, video: Tensor, prompts: Sequence[str]) -> Tensor:
        """``[B, T']`` per-frame scores ``100 * cos`` of ``video`` ``[B, T, 3, H, W]`` in ``[-1, 1]`` (no state change).

        The frames are quantised to ``[0, 255]`` first, as a video file holds them.
        """
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"VideoCLIPScore wants videos [B, T, 3, H, W] in [-1, 1], got {list(video.shape)}.")
        if len(prompts) != video.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {video.shape[0]} videos.")
        b, t = video.shape[:2]
        if self.frames is not None and self.frames < t:
            video = video[:, torch.linspace(0, t - 1, self.frames).round().long()]
            t = video.shape[1]
        images = ((video.float().clamp(-1, 1) + 1) * 127.5).round().flatten(0, 1)  # [B*T, 3, H, W] in [0, 255]
        texts = [str(p) for p in prompts for _ in range(t)]
        device = self.score.device
        img = self.model.get_image_features(self.processor(images=images)["pixel_values"].to(device))
        tok = self.processor(text=texts)
        txt = self.model.get_text_features(tok["input_ids"].to(device), tok["attention_mask"].to(device))
        cos = F.normalize(img.float(), dim=-1).mul(F.normalize(txt.float(), dim=-1)).sum(-1)
        return (100.0 * cos).view(b, t)

    def update(self, scores: Tensor) -> None:  # type: ignore[override]
        """Add per-frame scores from :meth:`frame_scores` (any shape)."""
        self.score += scores.detach().double().sum().to(self.score.device)
        self.n_samples += scores.numel()

    def compute(self) -> Tensor:
        return torch.clamp(self.score / self.n_samples.clamp_min(1), min=0.0).float()

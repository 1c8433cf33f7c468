"""A CLIP-based video reward on any open_clip architecture, with VQ, MQ and TA heads (SPEC.md §4.1).

Everything here is differentiable with respect to the video: the reward service takes the saliency
``||d raw_a / d pixels||`` from it (SPEC §4.3.1). Nothing is downloaded: CLIP weights come from a local file or a
``local-dir:`` folder (or stay random, for tests), the tokenizer is open_clip's bundled BPE one.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from streamr1.assets import resolve
from streamr1.protocols import AXES

FORMAT = "streamr1.rewards.openclip.OpenCLIPVideoReward"
"""``format`` field of a file written by :meth:`OpenCLIPVideoReward.save`."""
HEADS_FORMAT = "streamr1.rewards.openclip.heads"
"""``format`` field of a file written by :meth:`OpenCLIPVideoReward.save_heads`."""
BUNDLED_VOCAB_SIZE = 49408
"""Vocabulary of open_clip's bundled BPE tokenizer (``SimpleTokenizer``)."""

_CHECKPOINT_GLOBS = ("*.safetensors", "*.bin", "*.pth", "*.pt")


def _missing(path: str, key: str, what: str) -> FileNotFoundError:
    """A FileNotFoundError that names the path, the config key to fix and what is accepted there."""
    accepted = "an existing local file"
    if key == "pretrained":
        accepted += " (.bin/.pt/.pth/.safetensors), a `local-dir:/folder` holding open_clip_config.json and the " \
                    "weights, or null for random weights"
    else:
        accepted += ", or null"
    return FileNotFoundError(
        f"OpenCLIPVideoReward: {what} not found: {path!r}. Set `{key}` (the reward model's init_args.{key} in YAML) "
        f"to {accepted}. Nothing is downloaded here (open_clip pretrained tags such as 'openai' need the internet)."
    )


def _read_file(path: str, key: str, what: str, fmt: str) -> dict[str, Any]:
    path = resolve(path)  # pkg://<package>/<file>: a file shipped in a package
    if not os.path.isfile(path):
        raise _missing(path, key, what)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path!r} is not a {what} file (expected format {fmt!r}).")
    return payload


class VisualQualityHead(nn.Module):
    """VQ: an MLP on each frame's normalised image embedding, averaged over frames.

    ``[B, T, D]`` unit embeddings -> ``[B]``.
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, emb: Tensor) -> Tensor:
        return self.mlp(emb).squeeze(-1).mean(dim=1)


class MotionQualityHead(nn.Module):
    """MQ: an MLP on statistics of frame-to-frame embedding changes.

    With ``d1 = e[t+1] - e[t]`` and ``d2 = d1[t+1] - d1[t]`` of the unit embeddings ``e``, the features are, per
    embedding dimension, ``mean_t |d1|`` (how much the content changes), ``std_t d1`` (how unevenly: jitter) and
    ``mean_t |d2|`` (acceleration: flicker, jumps); ``3 D`` features -> MLP -> a score. Fewer than 2 (3) frames give
    zeros for the first (last) features. ``std`` is ``sqrt(var + 1e-8)`` so a static video has a finite gradient.

    ``[B, T, D]`` -> ``[B]``.
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    @staticmethod
    def features(emb: Tensor) -> Tensor:
        """``[B, T, D]`` -> ``[B, 3 D]``: ``[mean |d1|, std d1, mean |d2|]``."""
        b, t, d = emb.shape
        zeros = emb.new_zeros(b, d)
        if t < 2:
            return torch.cat([zeros, zeros, zeros], dim=-1)
        d1 = emb[:, 1:] - emb[:, :-1]
        speed = d1.abs().mean(dim=1)
        jitter = (d1.var(dim=1, correction=0) + 1e-8).sqrt()
        accel = (d1[:, 1:] - d1[:, :-1]).abs().mean(dim=1) if t >= 3 else zeros
        return torch.cat([speed, jitter, accel], dim=-1)

    def forward(self, emb: Tensor) -> Tensor:
        return self.mlp(self.features(emb)).squeeze(-1)


class TextAlignmentHead(nn.Module):
    """TA: ``scale * mean_t cos(text, frame_t)``, the CLIP score of each frame against the prompt, averaged.

    ``scale = exp(log_scale)`` is a parameter (trained with the heads, else fixed). ``[B, T, D]`` unit frame
    embeddings and ``[B, D]`` unit text embeddings -> ``[B]``.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"ta_scale must be > 0, got {scale}.")
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, emb: Tensor, text: Tensor) -> Tensor:
        cos = (emb * text[:, None, :]).sum(dim=-1)
        return self.log_scale.exp() * cos.mean(dim=1)


def _build_from_config(model_config: Mapping[str, Any]) -> nn.Module:
    """An open_clip model (CLIP, CustomTextCLIP or CoCa, chosen as ``open_clip.create_model`` does) from a dict."""
    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    cfg = copy.deepcopy(dict(model_config))
    preprocess = dict(cfg.pop("preprocess_cfg", {}) or {})
    vision_cfg, text_cfg = dict(cfg.get("vision_cfg", {})), dict(cfg.get("text_cfg", {}))
    if "timm_model_name" in vision_cfg:
        vision_cfg.setdefault("timm_model_pretrained", False)  # never download tower weights
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg.setdefault("hf_model_pretrained", False)
    cfg["vision_cfg"], cfg["text_cfg"] = vision_cfg, text_cfg
    custom_text = bool(cfg.pop("custom_text", False)) or hf_text
    cls = (open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP) if custom_text else open_clip.CLIP
    try:
        model = cls(**cfg)
    except Exception as err:
        raise ValueError(
            f"Could not build an open_clip {cls.__name__} from model_config {model_config}: {err}. (A tiny vision "
            f"tower needs `vision_cfg.head_width` <= `width`: open_clip's default head_width is 64.)"
        ) from err
    visual = model.visual
    set_model_preprocess_cfg(model, {
        "size": getattr(visual, "image_size", None),
        "mean": tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        **{k: v for k, v in preprocess.items() if k not in ("mean", "std", "size")},
    })
    return model


def _local_dir_config(folder: str) -> dict[str, Any]:
    path = Path(folder)
    cfg_file = path / "open_clip_config.json"
    if not path.is_dir() or not cfg_file.is_file():
        raise _missing(f"local-dir:{folder}", "pretrained", "open_clip folder (with open_clip_config.json)")
    if not any(p for g in _CHECKPOINT_GLOBS for p in path.glob(g)):
        raise _missing(f"local-dir:{folder}", "pretrained", "weights file (*.safetensors/*.bin/*.pth) in the folder")
    with open(cfg_file, encoding="utf-8") as fh:
        data = json.load(fh)
    if "model_cfg" not in data:
        raise ValueError(f"{cfg_file} has no 'model_cfg'.")
    return data


def _make_tokenizer(model_name: str | None, model_config: Mapping[str, Any] | None, local_dir: str | None) -> Any:
    """open_clip's offline tokenizer for the model: the bundled BPE ``SimpleTokenizer`` with its context length.

    ``model_config`` (when given) decides; a config naming a Hugging Face tokenizer (``hf_tokenizer_name``) gets
    open_clip's ``HFTokenizer`` (from the ``local-dir:`` folder if there is one), which only works if the tokenizer
    is on disk. Otherwise ``open_clip.get_tokenizer(model_name)``.
    """
    import open_clip

    text_cfg = dict((model_config or {}).get("text_cfg", {}))
    source = local_dir or model_name or "model_config"
    try:
        if model_config is not None and not text_cfg.get("hf_tokenizer_name"):
            vocab = int(text_cfg.get("vocab_size", BUNDLED_VOCAB_SIZE))
            if vocab != BUNDLED_VOCAB_SIZE:
                raise ValueError(
                    f"text_cfg.vocab_size={vocab}, but the bundled BPE tokenizer has {BUNDLED_VOCAB_SIZE} tokens: "
                    f"keep vocab_size {BUNDLED_VOCAB_SIZE} (tiny models shrink width/layers, not the vocabulary)."
                )
            return open_clip.tokenizer.SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)))
        if model_config is not None:  # a config that names a Hugging Face tokenizer
            return open_clip.tokenizer.HFTokenizer(
                local_dir or text_cfg["hf_tokenizer_name"], context_length=int(text_cfg.get("context_length", 77)),
                tokenizer_mode=text_cfg.get("tokenizer_mode"), **dict(text_cfg.get("tokenizer_kwargs", {})))
        return open_clip.get_tokenizer(model_name or "")
    except ValueError:
        raise
    except Exception as err:
        raise RuntimeError(
            f"No offline tokenizer for {source!r}: {err}. This architecture names a Hugging Face hub tokenizer "
            "(SigLIP and others), which cannot be downloaded here. Use an architecture with open_clip's bundled BPE "
            "tokenizer (the OpenAI-style CLIP configs), or put the tokenizer in the local Hugging Face cache."
        ) from err


class OpenCLIPVideoReward(nn.Module):
    """Scores videos on VQ, MQ and TA with one open_clip model and three small heads (SPEC §4.1).

    Each frame (optionally ``num_frames`` of them, evenly spaced) is resized to the CLIP input size (bilinear,
    no antialiasing, the whole frame squashed without cropping so every pixel gets a gradient) and normalised
    with the model's mean and std, all differentiably. Then, with ``e_t`` the unit image embedding of frame
    ``t`` and ``u`` the unit text embedding of the prompt:

    * **TA** (text alignment) ``= scale * mean_t cos(u, e_t)``: the CLIP score, averaged over frames. Measures
      whether the objects and attributes named in the prompt are visible. Weak on anything CLIP's bag-of-concepts
      embedding misses: counting, spatial relations, word order, and motion described in the prompt ("moving
      left" and "moving right" score alike on single frames).
    * **VQ** (visual quality) ``= mean_t MLP(e_t)``: a learned per-frame quality head. It only knows what its
      training taught it (random heads give a fixed random direction in embedding space); it sees frames at the
      CLIP resolution, so it is blind to fine texture, compression artefacts and noise below that scale.
    * **MQ** (motion quality) ``= MLP([mean_t |d1|, std_t d1, mean_t |d2|])`` over the frame-to-frame embedding
      differences ``d1`` and their differences ``d2``: rates smoothness (jitter, flicker, jumps) as seen in
      embedding space. Weak on motion that does not change the embedding (small objects, slow or in-place motion,
      wrong direction), and it cannot tell plausible physics from implausible.

    The CLIP towers are frozen (``requires_grad=False``); the heads train when ``trainable_heads``. With random
    CLIP weights (``pretrained=None``) the scores are arbitrary but deterministic for a given ``seed``, which the
    tests and the ``tiny_random`` recipe rely on (every DDP rank builds the same reward).

    Args:
        model_name: a built-in open_clip architecture (``"ViT-B-32"``, ...), or ``None`` with ``model_config``.
        model_config: an open_clip model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``); for tiny random
            models keep ``text_cfg.vocab_size`` 49408 (the bundled tokenizer's) and set ``vision_cfg.head_width``
            at most ``width``.
        pretrained: CLIP weights: a local checkpoint file, or ``local-dir:/folder`` holding
            ``open_clip_config.json`` and the weights (its config then defines the architecture); ``None`` for random.
        num_frames: frames scored per video, evenly spaced over ``T`` (``None``: every frame).
        heads_path: a file from :meth:`save_heads`, loaded last.
        trainable_heads: ``requires_grad`` of the heads' parameters (the reward service freezes everything anyway).
        head_hidden: hidden width of the VQ and MQ MLPs.
        ta_scale: initial ``scale`` of TA.
        state_path: a file from :meth:`save` (CLIP and heads in one). Given alone, its stored config builds the
            architecture; given with ``model_name``/``model_config``, it must fit that architecture.
        seed: seed of the random initialisation (CLIP without weights, and the heads).

    Example::

        reward = OpenCLIPVideoReward(model_name="ViT-B-32", pretrained="/weights/clip_b32.bin", num_frames=8,
                                     heads_path="/weights/heads.pt")
        scores = reward(video, ["a red circle moving left"])  # video [B, T, 3, H, W] in [0, 1]; {"VQ": [B], ...}
    """

    axes: tuple[str, ...] = AXES
    """The axes :meth:`forward` returns (the reward service reads this instead of probing the model)."""

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model_name: str | None = None,
        model_config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        num_frames: int | None = None,
        heads_path: str | None = None,
        trainable_heads: bool = False,
        head_hidden: int = 64,
        ta_scale: float = 1.0,
        state_path: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}.")
        stored: dict[str, Any] | None = None
        if state_path is not None:
            stored = _read_file(state_path, "state_path", "reward state file", FORMAT)
            if model_name is None and model_config is None and pretrained is None:
                model_name, model_config = stored["config"]["model_name"], stored["config"]["model_config"]
                head_hidden = int(stored["config"]["head_hidden"])
                if num_frames is None:
                    num_frames = stored["config"].get("num_frames")
        if pretrained is not None and pretrained.startswith("local-dir:"):
            if model_config is not None:
                raise ValueError("Give either `model_config` or a `local-dir:` pretrained folder (which has its own "
                                 "config), not both.")
            folder_cfg = _local_dir_config(pretrained[len("local-dir:"):])
            model_config = dict(folder_cfg["model_cfg"])
            if folder_cfg.get("preprocess_cfg"):  # kept with the architecture, so save() round-trips it
                model_config["preprocess_cfg"] = dict(folder_cfg["preprocess_cfg"])
        if model_name is None and model_config is None:
            raise ValueError("OpenCLIPVideoReward needs `model_name` (e.g. 'ViT-B-32'), `model_config` (a dict), a "
                             "`local-dir:` folder as `pretrained`, or a `state_path` written by save().")
        self.model_name, self.model_config = model_name, copy.deepcopy(model_config)
        self.num_frames, self.head_hidden = num_frames, int(head_hidden)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            local_dir = pretrained[len("local-dir:"):] if pretrained and pretrained.startswith("local-dir:") else None
            self.tokenizer = _make_tokenizer(model_name, model_config, local_dir)  # first: fails fast, cheaply
            self.clip = self._build_clip(model_name, model_config, pretrained)
            self.embed_dim = dim = self._infer_embed_dim()
            self.heads = nn.ModuleDict({
                "VQ": VisualQualityHead(dim, self.head_hidden),
                "MQ": MotionQualityHead(dim, self.head_hidden),
                "TA": TextAlignmentHead(ta_scale),
            })
        self.clip.requires_grad_(False)
        self.heads.requires_grad_(trainable_heads)

        from open_clip.model import get_model_preprocess_cfg

        pp = get_model_preprocess_cfg(self.clip)
        size = pp.get("size", getattr(self.clip.visual, "image_size", 224))
        self.image_size: tuple[int, int] = (int(size), int(size)) if isinstance(size, int) else tuple(size)[-2:]
        self.register_buffer("mean", torch.tensor(pp["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        if stored is not None:
            self._load_state_dict_checked(stored["state_dict"], state_path)
        if heads_path is not None:
            self.load_heads(heads_path)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _build_clip(model_name: str | None, model_config: Mapping[str, Any] | None,
                    pretrained: str | None) -> nn.Module:
        import open_clip

        if pretrained is not None and pretrained.startswith("local-dir:"):
            return open_clip.create_model(pretrained, pretrained_text=False, pretrained_image=False)
        if pretrained is not None and not os.path.isfile(pretrained):
            raise _missing(pretrained, "pretrained", "CLIP weights file")
        if model_config is not None:
            model = _build_from_config(model_config)
            if pretrained is not None:
                open_clip.load_checkpoint(model, pretrained, strict=True)
            return model
        assert model_name is not None
        return open_clip.create_model(model_name, pretrained=pretrained, pretrained_text=False, pretrained_image=False)

    def _infer_embed_dim(self) -> int:
        if self.model_config is not None and "embed_dim" in self.model_config:
            return int(self.model_config["embed_dim"])
        with torch.no_grad():  # built on the CPU, before any move
            return int(self.clip.encode_text(self.tokenizer(["a"])).shape[-1])

    def config(self) -> dict[str, Any]:
        """The architecture, as :meth:`save` stores it (``model_name``, ``model_config``, ``num_frames``, ...)."""
        return {"model_name": self.model_name, "model_config": copy.deepcopy(self.model_config),
                "num_frames": self.num_frames, "head_hidden": self.head_hidden}

    # ------------------------------------------------------------------ scoring
    def frame_indices(self, num_frames: int) -> Tensor:
        """Indices of the frames scored: ``num_frames`` evenly spaced (rounded), or all."""
        n = num_frames if self.num_frames is None else min(self.num_frames, num_frames)
        return torch.linspace(0, num_frames - 1, n).round().long()

    def preprocess(self, video: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` in ``[0, 1]`` -> ``[B * T', 3, S, S]`` CLIP input (subsampled, resized, normalised)."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W] in [0, 1], got shape {list(video.shape)}.")
        video = video.index_select(1, self.frame_indices(video.shape[1]).to(video.device))
        frames = video.flatten(0, 1)
        if tuple(frames.shape[-2:]) != self.image_size:
            frames = F_.interpolate(frames, size=self.image_size, mode="bilinear", align_corners=False, antialias=False)
        return (frames - self.mean.to(frames.dtype)) / self.std.to(frames.dtype)

    def embed_video(self, video: Tensor) -> Tensor:
        """``[B, T, 3, H, W]`` in ``[0, 1]`` -> ``[B, T', D]`` unit frame embeddings (differentiable)."""
        b = video.shape[0]
        emb = self.clip.encode_image(self.preprocess(video), normalize=True)
        return emb.view(b, -1, emb.shape[-1])

    def embed_text(self, prompts: Sequence[str], device: torch.device | None = None) -> Tensor:
        """``B`` prompts -> ``[B, D]`` unit text embeddings."""
        tokens = self.tokenizer([str(p) for p in prompts])
        if device is None:
            device = next(self.clip.parameters()).device
        return self.clip.encode_text(tokens.to(device), normalize=True)

    def forward(self, video: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Raw scores ``{"VQ": [B], "MQ": [B], "TA": [B]}`` of ``video`` ``[B, T, 3, H, W]`` in ``[0, 1]``.

        Differentiable with respect to ``video``. ``prompts`` has ``B`` captions.
        """
        if len(prompts) != video.shape[0]:
            raise ValueError(f"Got {len(prompts)} prompts for a batch of {video.shape[0]} videos.")
        emb = self.embed_video(video)
        text = self.embed_text(prompts, emb.device).to(emb.dtype)
        return {"VQ": self.heads["VQ"](emb), "MQ": self.heads["MQ"](emb), "TA": self.heads["TA"](emb, text)}

    # ------------------------------------------------------------------ files
    def save_heads(self, path: str | os.PathLike[str]) -> None:
        """Write the three heads (VQ and MQ MLPs, TA scale) to ``path`` (torch format)."""
        torch.save({"format": HEADS_FORMAT, "embed_dim": self.embed_dim, "head_hidden": self.head_hidden,
                    "state_dict": {k: v.detach().cpu() for k, v in self.heads.state_dict().items()}}, os.fspath(path))

    def load_heads(self, path: str | os.PathLike[str]) -> None:
        """Load heads written by :meth:`save_heads`; they must match this model's embedding size and hidden width."""
        payload = _read_file(os.fspath(path), "heads_path", "reward heads file", HEADS_FORMAT)
        want = (self.embed_dim, self.head_hidden)
        got = (int(payload["embed_dim"]), int(payload["head_hidden"]))
        if got != want:
            raise ValueError(f"Heads in {os.fspath(path)!r} are for (embed_dim, head_hidden) = {got}, this reward has "
                             f"{want}: set `head_hidden` to {got[1]} or use a CLIP with embed_dim {got[0]}.")
        self.heads.load_state_dict(payload["state_dict"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole reward (CLIP and heads, with its config) to one file; read it with
        ``OpenCLIPVideoReward(state_path=path)`` (config from the file) or :meth:`load_state`."""
        torch.save({"format": FORMAT, "config": self.config(),
                    "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}, os.fspath(path))

    def load_state(self, path: str | os.PathLike[str]) -> None:
        """Load CLIP and heads written by :meth:`save` into this (same-architecture) reward."""
        payload = _read_file(os.fspath(path), "state_path", "reward state file", FORMAT)
        self._load_state_dict_checked(payload["state_dict"], os.fspath(path))

    def _load_state_dict_checked(self, state: Mapping[str, Tensor], path: str) -> None:
        try:
            self.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path!r} does not fit this reward's architecture {self.config()}: {err}") from err

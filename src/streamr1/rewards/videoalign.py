"""VideoReward (VideoAlign, arXiv 2501.13918) as a differentiable streamr1 reward model (SPEC.md §4.6).

VideoReward is Qwen2-VL-2B-Instruct with a LoRA on the language model (r 64, alpha 128), a full fine-tune of the
vision tower and merger, three added special tokens and a bias-free reward head ``rm_head`` (hidden -> 3). The
prompt ("detailed_special") asks for three ratings and ends each one with a special token; the score of axis ``a``
is output ``a`` of ``rm_head`` read at the hidden state of token ``<|a_reward|>``.

Written from reading VideoAlign's published code (``inference.py``, ``train_reward.py``, ``trainer.py``,
``prompt_template.py``, ``vision_process.py``; KwaiVGI/VideoAlign), not copied; the prompt text is data the model
was trained on and is reproduced verbatim. What differs from it, on purpose:

* The input is a video tensor ``[B, T, 3, H, W]`` in ``[0, 1]`` (never a file), and the whole preprocessing (frame
  choice, resize, clamp, normalisation, patch layout) is torch code inside the autograd graph, so the reward
  service can take ``d score / d pixels`` (SPEC §4.3.1).
* Frames: Stream-R1's way by default (every frame, the last dropped when the count is odd: 80 of 81), or
  VideoAlign's own uniform sampling at ``sample_fps`` (2 fps: 10 of 81 frames at 16 fps). :meth:`scored_frames`
  says which source frames were scored, so the saliency can reach every latent frame
  (:func:`streamr1.rewards.saliency.fill_unscored_frames`).
* Resize: bicubic with antialiasing to a fixed ``size`` (Stream-R1: 336x588 for 480x832 videos, which is also what
  VideoAlign's ``max_pixels = 448 * 448`` picks for that aspect), then clamp to ``[0, 1]`` (SPEC §4.6).

The checkpoint was saved with transformers 4.45 and peft 0.10; its keys are renamed to the installed transformers'
layout with transformers' own conversion mapping for Qwen2-VL (``visual.`` -> ``model.visual.``, ``model.layers``
-> ``model.language_model.layers``); transformers >= 5 is needed. A checkpoint that lacks LoRA weights, the
reward head or any other part the run trained is refused, never half-loaded. Reading the folder is
:mod:`streamr1.rewards.videoalign_checkpoint` (its functions are importable from here too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from streamr1.protocols import AXES
from streamr1.rewards.saliency import merge_patch_order, unmerge_patch_order
from streamr1.rewards.videoalign_checkpoint import (  # noqa: F401 (re-exported: the loading API lives there)
    check_transformers,
    find_checkpoint,
    legacy_key_renamer,
    load_videoreward,
    read_videoreward_config,
    videoreward_statistics,
)

REWARD_TOKENS: dict[str, str] = {"VQ": "<|VQ_reward|>", "MQ": "<|MQ_reward|>", "TA": "<|TA_reward|>"}
"""The special token whose hidden state carries each axis' score (VideoAlign ``use_special_tokens``)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""Qwen2-VL's pixel normalisation (OpenAI CLIP's mean and std; ``Qwen2VLVideoProcessor.image_mean/std``)."""

VIDEO_MIN_PIXELS = 128 * 28 * 28
"""qwen-vl-utils' lower bound of pixels a frame (used only when ``size`` is ``None``)."""

CHAT_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
"""What Qwen2-VL-Instruct's chat template writes around one user turn ``[video, text]`` with
``add_generation_prompt=True`` (VideoAlign's ``apply_chat_template`` call): the default system turn, then the user
turn ``<|vision_start|><|video_pad|><|vision_end|>{text}``, then the assistant header."""

# VideoAlign's "detailed_special" prompt (prompt_template.py, DETAILED_PROMPT_WITH_SPECIAL_TOKEN), verbatim: the
# reward head was trained on the hidden states of exactly this text. Note the two trailing spaces on some lines.
DETAILED_SPECIAL_PROMPT = """
You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.

**Visual Quality:**  
Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:
- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

Please provide the ratings of Visual Quality: <|VQ_reward|>
END

**Motion Quality:**  
Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:
- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).
- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).
- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.
- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.
- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.
- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.

Please provide the ratings of Motion Quality: <|MQ_reward|>
END

**Text Alignment:**  
Assess how well the video matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.
- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.
- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.

Textual prompt - {text_prompt}
Please provide the ratings of Text Alignment: <|TA_reward|>
END
"""  # noqa: W291, E501

PROMPT_TEMPLATES: dict[str, str] = {"detailed_special": DETAILED_SPECIAL_PROMPT}
"""Prompt templates by VideoAlign's ``prompt_template_type``; only the special-token one reads the three axes."""


# ---------------------------------------------------------------------------------------------------- preprocessing
def _round_by(x: float, f: int) -> int:
    return round(x / f) * f


def sample_frame_indices(num_frames: int, sample_fps: float | None = None, source_fps: float = 16.0,
                         temporal_patch: int = 2, min_frames: int = 4, max_frames: int = 768) -> list[int]:
    """Which source frames the reward scores.

    ``sample_fps=None`` (Stream-R1, SPEC §4.6): every frame, the last one dropped when the count is not a multiple
    of the temporal patch (81 -> frames 0..79). Otherwise VideoAlign's ``uniform`` sampling (qwen-vl-utils
    ``smart_nframes``): ``n = T / source_fps * sample_fps`` clamped to ``[min_frames, min(max_frames, T)]`` and rounded
    to a multiple of ``temporal_patch``, at ``round(linspace(0, T - 1, n))`` (81 frames at 16 fps, 2 fps: 10 frames
    0, 9, 18, 27, 36, 44, 53, 62, 71, 80).

    Raises:
        ValueError: fewer frames than one temporal patch, or a non-positive fps.
    """
    tp = int(temporal_patch)
    if num_frames < tp:
        raise ValueError(f"The reward needs at least {tp} frames (Qwen2-VL's temporal patch), got {num_frames}.")
    if sample_fps is None:
        return list(range(num_frames - num_frames % tp))
    if sample_fps <= 0 or source_fps <= 0:
        raise ValueError(f"sample_fps and source_fps must be positive, got {sample_fps} and {source_fps}.")
    lo = math.ceil(min_frames / tp) * tp
    hi = math.floor(min(max_frames, num_frames) / tp) * tp
    n = _round_by(min(max(num_frames / source_fps * sample_fps, lo), hi), tp)
    n = max(tp, min(n, num_frames - num_frames % tp))
    return torch.linspace(0, num_frames - 1, n).round().long().tolist()


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = VIDEO_MIN_PIXELS,
                 max_pixels: int = 448 * 448) -> tuple[int, int]:
    """Qwen2-VL's frame size: multiples of ``factor`` closest to ``(height, width)`` with the pixel count in
    ``[min_pixels, max_pixels]`` (qwen-vl-utils / transformers ``smart_resize``). 480x832 with VideoReward's
    ``max_frame_pixels = 448 * 448`` gives 336x588."""
    h, w = max(factor, _round_by(height, factor)), max(factor, _round_by(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def resize_frames(frames: Tensor, size: Sequence[int]) -> Tensor:
    """``[B, T, C, H, W]`` -> ``[B, T, C, h, w]``: bicubic with antialiasing (what ``Qwen2VLVideoProcessor`` and
    Stream-R1 use), differentiable; unchanged when already at ``size``."""
    h, w = (int(v) for v in size)
    if tuple(frames.shape[-2:]) == (h, w):
        return frames
    b, t = frames.shape[:2]
    out = F_.interpolate(frames.flatten(0, 1), size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return out.view(b, t, *out.shape[1:])


def patchify(frames: Tensor, patch_size: int = 14, temporal_patch: int = 2,
             merge_size: int = 2) -> tuple[Tensor, tuple[int, int, int]]:
    """Qwen2-VL's patch layout, differentiably: ``[B, T, C, H, W]`` -> ``[B, N, C * tp * p * p]`` and ``(t, h, w)``.

    Each patch holds ``temporal_patch`` frames of a ``p x p`` square, flattened as ``(C, tp, p, p)``; the patches
    of each frame-pair are built in raster order and then put in Qwen2-VL's order, which keeps every
    ``merge x merge`` window contiguous (:func:`~streamr1.rewards.saliency.merge_patch_order`). Equal to
    ``Qwen2VLVideoProcessor.patchify`` (tested); the gradient of anything computed from the patches lands back on
    the frames in raster order.
    """
    b, n_t, c, height, width = frames.shape
    p, tp, m = int(patch_size), int(temporal_patch), int(merge_size)
    if n_t % tp or height % (p * m) or width % (p * m):
        raise ValueError(f"Frames [T={n_t}, H={height}, W={width}] must have T divisible by {tp} and H, W by "
                         f"{p * m} (patch {p} x merge {m}); resize first (``size``).")
    t, h, w = n_t // tp, height // p, width // p
    x = frames.reshape(b, t, tp, c, h, p, w, p).permute(1, 4, 6, 0, 3, 2, 5, 7)  # (t, h, w, B, C, tp, p, p)
    x = merge_patch_order(x.reshape(t, h, w, b, c * tp * p * p), merge=m)  # (N, B, D)
    return x.transpose(0, 1), (t, h, w)


def unpatchify(patches: Tensor, grid_thw: Sequence[int], channels: int = 3, patch_size: int = 14,
               temporal_patch: int = 2, merge_size: int = 2) -> Tensor:
    """The inverse of :func:`patchify` for one video: ``[N, C * tp * p * p]`` in Qwen2-VL's order -> ``[T, C, H, W]``.

    Uses :func:`~streamr1.rewards.saliency.unmerge_patch_order` (Qwen2-VL order -> raster order); the same call puts
    any per-patch map (``[N]``, e.g. a per-token saliency) back on the ``(t, h, w)`` grid.
    """
    t, h, w = (int(v) for v in grid_thw)
    p, tp = int(patch_size), int(temporal_patch)
    x = unmerge_patch_order(patches, (t, h, w), merge=merge_size)  # (t, h, w, D) raster
    x = x.reshape(t, h, w, channels, tp, p, p).permute(0, 4, 3, 1, 5, 2, 6)  # (t, tp, C, h, p, w, p)
    return x.reshape(t * tp, channels, h * p, w * p)


# ---------------------------------------------------------------------------------------------------- the reward
class VideoAlignReward(nn.Module):
    """VideoReward (Qwen2-VL-2B + LoRA + ``rm_head``) scoring ``[B, T, 3, H, W]`` videos in ``[0, 1]`` (SPEC §4.6).

    ``forward(video, prompts) -> {"VQ": [B], "MQ": [B], "TA": [B]}``: the raw scores, read at the three reward
    tokens of the "detailed_special" prompt, differentiable with respect to ``video``. Inside the graph: the frames
    of :meth:`scored_frames`, a bicubic antialiased resize to ``size``, clamp to ``[0, 1]``, Qwen2-VL's
    normalisation and patch layout (temporal patch 2, spatial 14, merge 2).

    Args:
        path: the VideoReward folder (``model_config.json`` and ``checkpoint-<step>/``).
        base_model: a local Qwen2-VL-2B-Instruct folder; default the ``model_name_or_path`` in
            ``model_config.json`` (a hub id, found only in the local HF cache: nothing is downloaded).
        checkpoint_step: which ``checkpoint-<step>`` (default the latest).
        sample_fps: ``None`` (Stream-R1): every frame, the last dropped when odd. A number: VideoAlign's uniform
            sampling at that rate; ``"model"``: the checkpoint's own ``data_config.fps`` (VideoReward: 2). See
            :func:`sample_frame_indices`.
        source_fps: the frame rate of the videos scored (16 for Wan), used only with ``sample_fps``.
        size: ``(height, width)`` each frame is resized to, multiples of 28 (Stream-R1: 336x588). ``None``: from the
            input size and ``max_pixels`` (qwen-vl-utils' ``smart_resize``).
        max_pixels: pixel budget a frame when ``size`` is ``None`` (VideoReward's ``max_frame_pixels``, 448 * 448).
        torch_dtype: ``bfloat16`` (as trained; halves memory), ``float16`` or ``float32``. The reward service later
            casts the model to the LightningModule's dtype.
        attn_implementation: transformers attention backend (``sdpa``, ``eager``, ``flash_attention_2``).
        merge_lora: merge the LoRA into the weights (faster, identical scores up to rounding).

    Example::

        # rewards/videoreward.yaml: layered after a recipe and a callback stack
        trainer:
          callbacks:
            - class_path: streamr1.rewards.service.RewardService
              init_args:
                model:
                  class_path: streamr1.rewards.videoalign.VideoAlignReward
                  init_args:
                    path: /weights/VideoReward              # model_config.json + checkpoint-<step>/
                    base_model: /weights/Qwen2-VL-2B-Instruct
                    sample_fps: null                        # Stream-R1: 80 of 81 frames; 2 = VideoReward's own
                    size: [336, 588]
                    torch_dtype: bfloat16
                # z-scores (SPEC 4.6): VideoReward's own statistics, written once by
                #   python -m streamr1.rewards.videoalign stats /weights/VideoReward --output stats/videoreward.json
                # or statistics calibrated on the student's rollouts (`streamr1 calibrate`); say which in the run.
                normalization: stats/videoreward.json

    .. code-block:: python

        reward = VideoAlignReward("/weights/VideoReward", base_model="/weights/Qwen2-VL-2B-Instruct")
        scores = reward(video, ["a cat surfing a wave"])   # video [B, 81, 3, 480, 832] in [0, 1]
        reward.scored_frames(81)                            # [0, 1, ..., 79]
    """

    axes: tuple[str, ...] = AXES

    def __init__(self, path: str, base_model: str | None = None, checkpoint_step: int | None = None,
                 sample_fps: float | Literal["model"] | None = None, source_fps: float = 16.0,
                 size: tuple[int, int] | None = (336, 588), max_pixels: int = 448 * 448,
                 torch_dtype: str = "bfloat16", attn_implementation: str = "sdpa", merge_lora: bool = True) -> None:
        super().__init__()
        dtype = _dtype(torch_dtype)
        model, tokenizer, head, cfg = load_videoreward(path, checkpoint_step=checkpoint_step, base_model=base_model,
                                                       torch_dtype=dtype, attn_implementation=attn_implementation,
                                                       merge_lora=merge_lora)
        data = cfg.get("data_config") or {}
        template = data.get("prompt_template_type", "detailed_special")
        if sample_fps == "model":
            if not data.get("fps"):
                raise ValueError(f"sample_fps='model', but {path!r}'s model_config.json has no data_config.fps.")
            sample_fps = float(data["fps"])
        self._build(model, tokenizer, head, template=template, sample_fps=sample_fps, source_fps=source_fps,
                    size=size, max_pixels=max_pixels)
        self.statistics = videoreward_statistics(path) if cfg.get("inference_config") else None

    @classmethod
    def from_parts(cls, model: nn.Module, tokenizer: Any, rm_head: Tensor | nn.Linear, *,
                   template: str = "detailed_special", sample_fps: float | None = None, source_fps: float = 16.0,
                   size: tuple[int, int] | None = (336, 588), max_pixels: int = 448 * 448) -> VideoAlignReward:
        """A reward from a built ``Qwen2VLForConditionalGeneration`` (LoRA merged or a PeftModel), its tokenizer
        (with the three reward tokens) and the head weight ``[3, hidden]``: for tests and custom loading."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        weight = rm_head.weight if isinstance(rm_head, nn.Linear) else rm_head
        self._build(model, tokenizer, weight.detach(), template=template, sample_fps=sample_fps,
                    source_fps=source_fps, size=size, max_pixels=max_pixels)
        self.statistics = None
        return self

    def _build(self, model: nn.Module, tokenizer: Any, head: Tensor, *, template: str, sample_fps: float | None,
               source_fps: float, size: tuple[int, int] | None, max_pixels: int) -> None:
        check_transformers()
        if template not in PROMPT_TEMPLATES:
            raise ValueError(f"VideoAlignReward reads the scores at the reward tokens, which only the prompt templates "
                             f"{sorted(PROMPT_TEMPLATES)} contain; got {template!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.template = PROMPT_TEMPLATES[template]
        qwen = self._qwen()
        vcfg = qwen.config.vision_config
        self.patch_size, self.temporal_patch = int(vcfg.patch_size), int(vcfg.temporal_patch_size)
        self.merge_size = int(vcfg.spatial_merge_size)
        factor = self.patch_size * self.merge_size
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if size[0] % factor or size[1] % factor or min(size) < factor:
                raise ValueError(f"size {list(size)} must be positive multiples of {factor} (patch {self.patch_size} "
                                 f"x merge {self.merge_size}); Stream-R1 uses [336, 588].")
        self.size, self.max_pixels = size, int(max_pixels)
        self.sample_fps, self.source_fps = sample_fps, float(source_fps)
        hidden = head.shape[1]
        self.rm_head = nn.Linear(hidden, 3, bias=False, dtype=head.dtype, device=head.device)
        with torch.no_grad():
            self.rm_head.weight.copy_(head)
        ids = tokenizer.convert_tokens_to_ids(list(REWARD_TOKENS.values()))
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or i == unk for i in ids):
            raise ValueError(f"The tokenizer lacks the reward tokens {list(REWARD_TOKENS.values())}: add them with "
                             "tokenizer.add_special_tokens({'additional_special_tokens': [...]}) as VideoAlign does.")
        self._reward_ids = ids
        self._video_id = int(qwen.config.video_token_id)
        self._vision_start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
        self._vision_end = tokenizer.convert_tokens_to_ids("<|vision_end|>")
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    def _qwen(self) -> nn.Module:
        """The ``Qwen2VLForConditionalGeneration`` (under a PeftModel when the LoRA is not merged)."""
        get = getattr(self.model, "get_base_model", None)
        return get() if callable(get) else self.model

    # ------------------------------------------------------------------ preprocessing
    def scored_frames(self, num_frames: int) -> list[int]:
        """Indices of the source frames this reward scores in a ``num_frames`` video (the hook the reward service
        uses to spread saliency to every latent frame; SPEC §4.6)."""
        return sample_frame_indices(num_frames, self.sample_fps, self.source_fps, self.temporal_patch)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` each frame is resized to."""
        if self.size is not None:
            return self.size
        return smart_resize(height, width, self.patch_size * self.merge_size, VIDEO_MIN_PIXELS, self.max_pixels)

    def preprocess(self, video: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """``[B, T, 3, H, W]`` in ``[0, 1]`` -> Qwen2-VL patches ``[B, N, 3 * 2 * 14 * 14]`` (float32) and the patch
        grid ``(t, h, w)``: scored frames, bicubic antialiased resize, clamp to ``[0, 1]``, ``(x - mean) / std``,
        patchify. Differentiable with respect to ``video``."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W] in [0, 1], got shape {list(video.shape)}.")
        idx = self.scored_frames(video.shape[1])
        frames = video.float()
        if idx != list(range(video.shape[1])):
            frames = frames[:, torch.tensor(idx, device=video.device)]
        frames = resize_frames(frames, self.frame_size(*video.shape[-2:])).clamp(0.0, 1.0)
        # Constants made here in float32, not buffers: a cast of the model to bf16 must not round them.
        mean = torch.tensor(CLIP_MEAN, device=frames.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=frames.device).view(1, 1, 3, 1, 1)
        frames = (frames - mean) / std
        return patchify(frames, self.patch_size, self.temporal_patch, self.merge_size)

    def build_inputs(self, prompts: Sequence[str], n_video_tokens: int, device: torch.device) -> dict[str, Tensor]:
        """Token ids, attention mask, ``mm_token_type_ids`` (2 on video tokens) and the ``[B, 3]`` positions of the
        reward tokens, right-padded like VideoAlign's collator. The text is Qwen2-VL's chat format around
        ``<|vision_start|>`` + ``n_video_tokens`` x ``<|video_pad|>`` + ``<|vision_end|>`` + the filled template."""
        tok = self.tokenizer
        head = tok(CHAT_PREFIX, add_special_tokens=False)["input_ids"]
        rows = []
        for p in prompts:
            text = self.template.format(text_prompt=str(p)) + CHAT_SUFFIX
            tail = tok(text, add_special_tokens=False)["input_ids"]
            rows.append(head + [self._vision_start] + [self._video_id] * n_video_tokens + [self._vision_end] + tail)
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        pos = []
        for i, r in enumerate(rows):
            found = []
            for a, tid in zip(AXES, self._reward_ids, strict=True):
                where = [j for j, t in enumerate(r) if t == tid]
                if len(where) != 1:
                    raise ValueError(f"Prompt {i} tokenises to {len(where)} {REWARD_TOKENS[a]} tokens (expected one); "
                                     "a caption must not contain the reward tokens.")
                found.append(where[0])
            pos.append(found)
        mm = (ids == self._video_id).to(torch.int32) * 2
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "mm_token_type_ids": mm.to(device),
                "reward_positions": torch.tensor(pos, device=device)}

    # ------------------------------------------------------------------ scoring
    def score_patches(self, pixel_values_videos: Tensor, video_grid_thw: Tensor,
                      prompts: Sequence[str]) -> dict[str, Tensor]:
        """Scores from Qwen2-VL patches ``[B * N, D]`` (one video a prompt, all of one grid) and ``[B, 3]`` grids."""
        qwen = self._qwen()
        grid = [int(v) for v in video_grid_thw[0]]
        n_tokens = grid[0] * grid[1] * grid[2] // self.merge_size**2
        device = self.rm_head.weight.device
        inputs = self.build_inputs(prompts, n_tokens, device)
        positions = inputs.pop("reward_positions")
        vis_dtype = next(qwen.model.visual.parameters()).dtype
        out = qwen.model(pixel_values_videos=pixel_values_videos.to(device=device, dtype=vis_dtype),
                         video_grid_thw=video_grid_thw.to(device), use_cache=False, **inputs)
        hidden = out.last_hidden_state  # [B, L, D]
        b = hidden.shape[0]
        at = hidden[torch.arange(b, device=device)[:, None], positions]  # [B, 3, D]: hidden at VQ, MQ, TA tokens
        logits = self.rm_head(at.to(self.rm_head.weight.dtype))  # [B, 3 tokens, 3 outputs]
        # Axis i is output i at token i (VideoAlign: the diagonal of [B, 3, 3]).
        return {a: logits[:, i, i].float() for i, a in enumerate(AXES)}

    def forward(self, video: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Raw ``{"VQ", "MQ", "TA": [B]}`` (float32) for ``video`` ``[B, T, 3, H, W]`` in ``[0, 1]``."""
        prompts = [str(p) for p in prompts]
        if len(prompts) != video.shape[0]:
            raise ValueError(f"Got {len(prompts)} prompts for {video.shape[0]} videos.")
        patches, grid = self.preprocess(video)
        b, n, d = patches.shape
        grid_thw = torch.tensor([grid] * b, dtype=torch.long)
        return self.score_patches(patches.reshape(b * n, d), grid_thw, prompts)


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in table:
        raise ValueError(f"torch_dtype must be one of {sorted(table)}, got {name!r}.")
    return table[name]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m streamr1.rewards.videoalign stats FOLDER --output FILE``: write VideoReward's own statistics in the
    RewardService's ``normalization`` format."""
    import argparse

    from streamr1.rewards.normalization import write_stats

    parser = argparse.ArgumentParser(prog="python -m streamr1.rewards.videoalign", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="write VideoReward's per-axis mean/std (model_config.json) to a file")
    stats.add_argument("folder", help="the VideoReward folder")
    stats.add_argument("--output", required=True, help="a .json or .yaml file")
    args = parser.parse_args(argv)
    write_stats(args.output, videoreward_statistics(args.folder))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

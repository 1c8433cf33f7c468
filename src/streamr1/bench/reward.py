"""Reward benchmark: the reference's saliency scheme against ours, at VideoReward's width (SPEC.md §4.5).

``python -m streamr1.bench.reward`` (part of ``make bench``). A random-weight VideoAlignReward with Qwen2-VL-2B's
widths (language model hidden 1536, 12 heads of 128, 2 KV heads, MLP 8960; vision tower 1280 wide, 16 heads, MLP
5120) and ``--layers`` / ``--vision-layers`` of each (default 1 and 1; the 2B has 28 and 32), on the recipe's frame
count (81 frames: 80 scored) at a reduced frame size (default 56x112 from 80x158; Stream-R1's is 336x588 from
480x832) so that one CPU thread runs it in minutes. Two schemes score the same video and give the per-axis saliency
``||d raw_a / d pixels||``:

* reference (Stream-R1's released code): one no-grad forward for the scores, one forward with grad, one backward
  an axis (three, the graph retained between them);
* ours (:class:`~streamr1.rewards.service.RewardService`): one forward with grad serves the scores, and ONE batched
  backward (``torch.autograd.grad(..., is_grads_batched=True)``) gives all three axes;
* ours with ``batched_backward=False``: the same one forward, then one backward an axis (the service's fallback; it
  trades the batched backward's extra memory for time).

A first call of each (their outputs compared: scores and saliency must agree) is the warm-up; then
``--repeats`` interleaved rounds (A, B, A, B, ...; :func:`streamr1.bench.measure.interleaved`) give the median time
with its range and the per-round ratio; one more call of each gives the peak memory
(:func:`streamr1.bench.measure.peak_memory`: the CUDA allocator's peak on a GPU, torch.profiler's CPU allocation
events on a CPU).

    python -m streamr1.bench.reward --threads 1                              # CPU defaults (make bench)
    python -m streamr1.bench.reward --layers 4 --vision-layers 4 --size 112 196
    python -m streamr1.bench.reward --device cuda --dtype bfloat16 --layers 28 --vision-layers 32 --size 336 588
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler's C++ logger: keep the table readable
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from streamr1.protocols import AXES  # noqa: E402

QWEN2VL_2B_TEXT = {"hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
                   "num_key_value_heads": 2, "num_hidden_layers": 28}
QWEN2VL_2B_VISION = {"embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4, "depth": 32}
"""Qwen2-VL-2B-Instruct's widths (its config.json); the benchmark keeps these and cuts the layer counts."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]


def random_qwen2vl(tokenizer: Any, *, text: dict[str, int] | None = None, vision: dict[str, int] | None = None,
                   seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A random ``Qwen2VLForConditionalGeneration`` whose vocabulary and token ids fit ``tokenizer``.

    ``text`` / ``vision`` override the sub-configs (default: a tiny model, hidden 32, 2 layers each).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, **(text or {})}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    quarter = head_dim // 4  # M-RoPE splits the rotary half into (temporal, height, width) sections
    section = [head_dim // 2 - 2 * quarter, quarter, quarter]
    vision = {"embed_dim": 32, "hidden_size": text["hidden_size"], "num_heads": 4, "mlp_ratio": 2, "depth": 2,
              **(vision or {})}
    ids = dict(zip(SPECIAL_TOKENS[:7], tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[:7]), strict=True))
    config = Qwen2VLConfig(
        text_config={**text, "vocab_size": len(tokenizer), "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "rope_parameters": {"rope_type": "default",
                                                                                "rope_theta": 1e6,
                                                                                "mrope_section": section}},
        vision_config={**vision, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                       "in_channels": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(dtype)
    return model.eval()


def word_tokenizer(texts: Sequence[str], reward_tokens: bool = True) -> Any:
    """A word-level tokenizer over the words of ``texts`` (byte-level pre-tokenisation, as Qwen2's BPE splits
    words) with Qwen2-VL's special tokens, plus the three reward tokens unless ``reward_tokens`` is False (a base
    Qwen2-VL's tokenizer), built offline; it stands in for Qwen2's BPE tokenizer in tests and the benchmark. The
    prompt's token count is of the order of a BPE tokenizer's (VideoAlign's detailed prompt in the chat wrapper:
    about 830 tokens; one token a byte would give about 3,100). Unknown words map to ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words: dict[str, int] = {"<unk>": 0}
    for text in texts:
        for piece in (p for part in _split_special(text) for p, _ in pre.pre_tokenize_str(part)):
            words.setdefault(piece, len(words))
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    extra = SPECIAL_TOKENS[1:] if reward_tokens else SPECIAL_TOKENS[1:-3]
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token=SPECIAL_TOKENS[0],
                                   eos_token="<|im_end|>", additional_special_tokens=extra, padding_side="right")


def _split_special(text: str) -> list[str]:
    return [p for p in re.split("|".join(re.escape(t) for t in SPECIAL_TOKENS), text) if p]


def random_videoalign(*, layers: int = 2, vision_layers: int = 2, size: tuple[int, int] = (112, 196),
                      tiny: bool = False, prompts: Sequence[str] = (), dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", seed: int = 0) -> Any:
    """A random-weight :class:`~streamr1.rewards.videoalign.VideoAlignReward` at Qwen2-VL-2B's widths with ``layers``
    language-model and ``vision_layers`` vision-tower layers (``tiny``: hidden 32 instead), a word-level tokenizer
    over the prompt template and ``prompts``, frames resized to ``size``."""
    from streamr1.rewards.videoalign import CHAT_PREFIX, CHAT_SUFFIX, DETAILED_SPECIAL_PROMPT, VideoAlignReward

    tok = word_tokenizer([CHAT_PREFIX, CHAT_SUFFIX, DETAILED_SPECIAL_PROMPT, *prompts])
    text = {"num_hidden_layers": layers} if tiny else {**QWEN2VL_2B_TEXT, "num_hidden_layers": layers}
    vision = {"depth": vision_layers} if tiny else {**QWEN2VL_2B_VISION, "depth": vision_layers}
    model = random_qwen2vl(tok, text=text, vision=vision, seed=seed, dtype=dtype)
    hidden = model.config.text_config.hidden_size
    head = torch.randn(3, hidden, generator=torch.Generator().manual_seed(seed + 1)) / hidden**0.5
    reward = VideoAlignReward.from_parts(model, tok, head.to(dtype), size=size)
    return reward.to(device).eval().requires_grad_(False)


RANDOM_STATS = {"VQ_mean": 3.1, "VQ_std": 2.2, "MQ_mean": 1.2, "MQ_std": 1.4, "TA_mean": 2.8, "TA_std": 2.5}
"""The per-axis statistics :func:`write_random_videoreward` puts in ``model_config.json`` (``inference_config``)."""


def _old_key(key: str) -> str:
    """transformers 5 Qwen2-VL key -> the 4.45 one VideoReward was saved with (the inverse of the load renames)."""
    key = re.sub(r"^model\.visual\.", "visual.", key)
    return re.sub(r"^model\.language_model\.", "model.", key)


def write_random_videoreward(root: str, *, prompts: Sequence[str] = (), text: dict[str, int] | None = None,
                             vision: dict[str, int] | None = None, lora_r: int = 4, size: tuple[int, int] = (56, 84),
                             seed: int = 0) -> tuple[str, Any]:
    """Write a random VideoReward laid out exactly as published, for tests and smoke runs without the real weights.

    ``root/Qwen2-VL-tiny/`` is the base model (``save_pretrained``; tiny widths unless ``text`` / ``vision`` say
    otherwise) with a word-level tokenizer over the prompt template and ``prompts`` that lacks the reward tokens;
    ``root/VideoReward/`` holds ``model_config.json`` (naming that base, with per-axis statistics) and
    ``checkpoint-1234/`` with ``adapter_model.safetensors`` and ``adapter_config.json`` (a LoRA of rank ``lora_r``,
    alpha ``2 * lora_r``, non-zero, on every linear layer of the language model) and ``non_lora_state_dict.pth``
    (a changed vision tower and merger, embeddings with the three reward-token rows, ``rm_head``), every key in
    transformers 4.45's layout under peft's ``base_model.model.`` prefix, as VideoAlign's trainer saves them.

    Returns:
        ``(folder, reference)``: the VideoReward folder and a :class:`VideoAlignReward` built in memory from the same
        weights with the LoRA unmerged (frames resized to ``size``), to compare a load against.
    """
    import copy

    import safetensors.torch
    from peft import LoraConfig, get_peft_model

    from streamr1.rewards.videoalign import (
        CHAT_PREFIX,
        CHAT_SUFFIX,
        DETAILED_SPECIAL_PROMPT,
        REWARD_TOKENS,
        VideoAlignReward,
    )

    base_tok = word_tokenizer([CHAT_PREFIX, CHAT_SUFFIX, DETAILED_SPECIAL_PROMPT, *prompts], reward_tokens=False)
    base = random_qwen2vl(base_tok, text=text, vision=vision, seed=seed)
    base_dir = os.path.join(root, "Qwen2-VL-tiny")
    base.save_pretrained(base_dir)
    base_tok.save_pretrained(base_dir)

    # "Training": three token rows added, vision tower changed, a LoRA with non-zero B on the language model.
    trained = copy.deepcopy(base)
    tok = copy.deepcopy(base_tok)
    tok.add_special_tokens({"additional_special_tokens": list(REWARD_TOKENS.values())})
    trained.resize_token_embeddings(len(tok))
    g = torch.Generator().manual_seed(seed + 10)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".visual." in f".{name}" or name.endswith("embed_tokens.weight"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    targets = r"^model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"
    peft = get_peft_model(trained, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=targets,
                                              lora_dropout=0.0))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    head = torch.randn(3, base.config.text_config.hidden_size, generator=g)
    reference = VideoAlignReward.from_parts(peft, tok, head, size=size)

    folder = os.path.join(root, "VideoReward")
    ckpt = os.path.join(folder, "checkpoint-1234")
    os.makedirs(ckpt)
    adapter, modules = {}, set()
    for k, v in peft.state_dict().items():
        if "lora_" in k:
            inner = k[len("base_model.model."):].replace(".default", "")
            adapter["base_model.model." + _old_key(inner)] = v.clone()
            modules.add(_old_key(inner.split(".lora_")[0] + ".weight")[: -len(".weight")])
    safetensors.torch.save_file(adapter, os.path.join(ckpt, "adapter_model.safetensors"))
    with open(os.path.join(ckpt, "adapter_config.json"), "w") as fh:
        json.dump({"r": lora_r, "lora_alpha": 2 * lora_r, "target_modules": sorted(modules), "peft_type": "LORA"}, fh)
    inner_model = peft.get_base_model()
    non_lora = {f"base_model.model.{_old_key(k)}": v.clone() for k, v in inner_model.state_dict().items()
                if ".visual." in f".{k}" or k.endswith("embed_tokens.weight")}
    non_lora["base_model.model.rm_head.weight"] = head.clone()
    torch.save(non_lora, os.path.join(ckpt, "non_lora_state_dict.pth"))
    config = {
        "data_config": {"fps": 2.0, "max_frame_pixels": 200704, "num_frames": None, "sample_type": "uniform",
                        "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special",
                        "meta_data": "x.csv", "data_dir": "x"},
        "model_config": {"model_name_or_path": base_dir, "output_dim": 3, "use_special_tokens": True,
                         "freeze_vision_tower": False, "freeze_llm": False, "tune_merger": True,
                         "torch_dtype": "bfloat16", "reward_token": "special", "loss_type": "btt"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": lora_r, "lora_alpha": 2 * lora_r,
                             "lora_dropout": 0.05, "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens",
                                                                             "visual"],
                             "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1},
        "inference_config": RANDOM_STATS,
    }
    with open(os.path.join(folder, "model_config.json"), "w") as fh:
        json.dump(config, fh)
    return folder, reference


def _rgb_norm(g: Tensor) -> Tensor:
    """``[..., T, 3, H, W]`` gradient -> ``[..., T, H, W]``, its L2 norm over RGB (float32)."""
    g = g.float()
    return (g * g).sum(dim=-3).sqrt()


def reference_scheme(reward: Callable[..., dict[str, Tensor]], video: Tensor,
                     prompts: Sequence[str]) -> tuple[dict[str, Tensor], Tensor]:
    """Stream-R1's released way (SPEC §4.5): a no-grad forward for the scores, a second forward with grad, then one
    backward an axis (the graph retained between them). Returns raw scores ``{axis: [B]}`` and the saliency
    ``[A, B, T, H, W]`` (``||d raw_a / d pixels||`` over RGB, each axis' scores summed over the batch)."""
    with torch.no_grad():
        scores = {a: s.detach().float() for a, s in reward(video, prompts).items()}
    pixels = video.detach().requires_grad_(True)
    with torch.enable_grad():
        out = reward(pixels, prompts)
        maps = []
        for i, a in enumerate(AXES):
            (g,) = torch.autograd.grad(out[a].sum(), pixels, retain_graph=i < len(AXES) - 1)
            maps.append(_rgb_norm(g))
    return scores, torch.stack(maps)


def service_scheme(service: Any, video: Tensor, prompts: Sequence[str]) -> tuple[dict[str, Tensor], Tensor]:
    """Ours: :meth:`RewardService.score <streamr1.rewards.service.RewardService.score>` with saliency, one forward
    with grad and one batched backward over the axes. Takes ``video`` in ``[0, 1]`` like the reference (the service
    wants ``[-1, 1]``); same returns as :func:`reference_scheme`."""
    result = service.score(video * 2.0 - 1.0, prompts, saliency=True)
    return dict(result.raw), torch.stack([result.saliency[a] for a in AXES])


def make_service(reward: Any, device: torch.device, batched_backward: bool = True) -> Any:
    """A :class:`~streamr1.rewards.service.RewardService` around ``reward`` on ``device`` (no normalisation);
    ``batched_backward=False`` is its one-backward-an-axis mode (still one forward)."""
    import warnings

    from streamr1.rewards.service import RewardService

    service = RewardService(model=reward, normalization=None, keep_pixels=False, saliency=True,
                            batched_backward=batched_backward)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        service.prepare(device)
    return service


def section_reward(*, layers: int = 1, vision_layers: int = 1, frames: int = 81, size: tuple[int, int] = (56, 112),
                   input_size: tuple[int, int] | None = None, batch: int = 1, repeats: int = 3, tiny: bool = False,
                   device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[list[Any], dict]:
    """Time and peak memory of the reference scheme against ours on one random video; rows for the table and the
    settings actually used. The saliency of the two is compared (max relative difference)."""
    from streamr1.bench.measure import Row, interleaved, pair_ratios, peak_memory, spread

    dev = torch.device(device)
    prompts = [f"a corgi surfing a wave at sunset, take {i}" for i in range(batch)]
    reward = random_videoalign(layers=layers, vision_layers=vision_layers, size=size, tiny=tiny, prompts=prompts,
                               dtype=dtype, device=dev, seed=seed)
    service = make_service(reward, dev)
    if input_size is None:  # like Wan's 480x832 -> 336x588: the resize runs in the graph
        input_size = (round(size[0] * 480 / 336), round(size[1] * 832 / 588))
    video = torch.rand(batch, frames, 3, *input_size, generator=torch.Generator().manual_seed(seed)).to(dev)

    scored = reward.scored_frames(frames)
    t, h, w = len(scored) // 2, size[0] // 14, size[1] // 14
    video_tokens = t * h * w // 4
    n_tokens = int(reward.build_inputs(prompts, video_tokens, torch.device("cpu"))["attention_mask"].sum(1).max())
    cfg = reward._qwen().config
    settings = {
        "lm": f"hidden {cfg.text_config.hidden_size}, {cfg.text_config.num_attention_heads} heads, "
              f"{cfg.text_config.num_key_value_heads} kv heads, MLP {cfg.text_config.intermediate_size}, "
              f"{layers} layers (2B: 28)",
        "vision": f"embed {cfg.vision_config.embed_dim}, {cfg.vision_config.num_heads} heads, {vision_layers} layers "
                  f"(2B: 32)",
        "video": f"{batch} x {frames} frames {input_size[0]}x{input_size[1]} -> {len(scored)} scored at "
                 f"{size[0]}x{size[1]}",
        "tokens": f"{t * h * w} patches, {video_tokens} video + {n_tokens - video_tokens} text tokens a sample",
        "device": str(dev), "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "repeats": repeats,
    }

    services = {"ours": service, "ours, per-axis backward": make_service(reward, dev, batched_backward=False)}
    ref_scores, ref_sal = reference_scheme(reward, video, prompts)
    calls, sal_diff, score_diff = {}, 0.0, 0.0
    scale = max(float(ref_sal.abs().max()), 1e-30)
    for name, svc in services.items():  # the first call of each: outputs compared, and the warm-up
        f0, b0 = svc.forward_calls, svc.backward_calls
        scores, sal = service_scheme(svc, video, prompts)
        calls[name] = (svc.forward_calls - f0, svc.backward_calls - b0)
        sal_diff = max(sal_diff, float((sal.to(ref_sal) - ref_sal).abs().max()) / scale)
        score_diff = max([score_diff] + [float((scores[a].cpu() - ref_scores[a].cpu()).abs().max()) for a in AXES])

    fns: dict[str, Callable[[], Any]] = {"reference": lambda: reference_scheme(reward, video, prompts)}
    for name, svc in services.items():
        fns[name] = lambda svc=svc: service_scheme(svc, video, prompts)
    seconds = interleaved(fns, repeats, dev, warmup=0)  # the checks above were the warm-up
    memory = {name: peak_memory(fn, dev) for name, fn in fns.items()}
    mib = 1.0 / 2**20
    sec = "reward"
    what = {"reference": "no-grad forward + forward + 3 backward",
            "ours": f"{calls['ours'][0]} forward + {calls['ours'][1]} batched backward",
            "ours, per-axis backward": f"{calls['ours, per-axis backward'][0]} forward + "
                                       f"{calls['ours, per-axis backward'][1]} backward"}
    rows = []
    for name in fns:
        rows.append(Row(sec, f"time, {name}: {what[name]}", spread(seconds[name]), "s"))
    for name in services:
        rows.append(Row(sec, f"time {name} / reference", pair_ratios(seconds[name], seconds["reference"]), "x",
                        "per-round ratio"))
    for name in fns:
        rows.append(Row(sec, f"peak memory, {name}", memory[name] * mib, "MiB",
                        "CUDA allocator peak" if dev.type == "cuda" else "torch.profiler CPU allocations"))
    for name in services:
        rows.append(Row(sec, f"peak memory {name} / reference", memory[name] / max(memory["reference"], 1), "x"))
    rows += [
        Row(sec, "saliency max |ours - reference| / max reference", sal_diff, "",
            "same maps" if sal_diff < 1e-3 else "DIFFERENT"),
        Row(sec, "scores max |ours - reference|", score_diff, ""),
    ]
    settings["saliency_rel_diff"], settings["score_abs_diff"] = sal_diff, score_diff
    return rows, settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streamr1.bench.reward", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--layers", type=int, default=1, help="language-model layers (Qwen2-VL-2B has 28)")
    p.add_argument("--vision-layers", type=int, default=1, help="vision-tower layers (Qwen2-VL-2B has 32)")
    p.add_argument("--frames", type=int, default=81, help="frames of the video (the recipe: 81; 80 are scored)")
    p.add_argument("--size", type=int, nargs=2, default=[56, 112], metavar=("H", "W"),
                   help="frame size the reward sees, multiples of 28 (Stream-R1: 336 588; reduced for a CPU)")
    p.add_argument("--batch", type=int, default=1, help="videos a call")
    p.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (A, B, A, B, ...)")
    p.add_argument("--tiny", action="store_true", help="hidden 32 instead of Qwen2-VL-2B's widths (smoke test)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also save the rows and settings to this JSON file")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.layers < 1 or args.vision_layers < 1 or args.batch < 1 or args.frames < 2:
        p.error("--repeats, --layers, --vision-layers, --batch must be >= 1 and --frames >= 2")
    if any(s % 28 for s in args.size):
        p.error(f"--size {args.size}: both must be multiples of 28 (patch 14 x merge 2)")
    return args


def main(argv: Sequence[str] | None = None) -> list[Any]:
    """Run the reward benchmark, print the table (and save ``--json``); returns the rows."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from streamr1.bench.measure import Spread, markdown_table

    rows, settings = section_reward(layers=args.layers, vision_layers=args.vision_layers, frames=args.frames,
                                    size=tuple(args.size), batch=args.batch, repeats=args.repeats, tiny=args.tiny,
                                    device=args.device, dtype=getattr(torch, args.dtype), seed=args.seed)
    print("\nstreamr1 reward benchmark (SPEC 4.5): random-weight VideoAlignReward; "
          + "; ".join(f"{k}: {v}" for k, v in settings.items() if not k.endswith("diff")) + "\n")
    print(markdown_table(rows))
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"settings": settings, "rows": [{**asdict(r), "value": asdict(r.value) if isinstance(
                r.value, Spread) else r.value} for r in rows]}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()

"""A whole Wan pipeline folder (transformer/, vae/, text_encoder/, tokenizer/) built offline from tiny random models
with ``save_pretrained`` loads through the project's classes and gives the source models' outputs (issue 11)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from streamr1.models import CausalWanDenoiser, UMT5TextEncoder, WanDenoiser, WanVAE

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "a red circle moving left blue square right green triangle up down the cat on".split()
TEXT_DIM, Z = 16, 4
WAN = {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": Z,
       "out_channels": Z, "text_dim": TEXT_DIM, "freq_dim": 32, "ffn_dim": 32, "num_layers": 2}
VAE = {"base_dim": 8, "z_dim": Z, "dim_mult": [1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [True, True],
       "latents_mean": [0.5, -0.25, 0.0, 1.0], "latents_std": [2.0, 0.5, 1.0, 4.0]}
MAX_LEN = 8


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The source models and the folder they were saved to (a Wan diffusers pipeline's layout)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("Wan-tiny-Diffusers")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0 - i) for i, w in enumerate(WORDS)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)  # a Unigram tokenizer from a vocabulary: no download
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1,
                                       num_heads=2, relative_attention_num_buckets=8)).eval()
    transformer = WanTransformer3DModel(**WAN).eval()
    vae = AutoencoderKLWan(**VAE).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.save_pretrained(folder)  # exactly the folder diffusers writes (model_index.json, the five subfolders)
    return {"folder": str(folder), "tokenizer": tokenizer, "text": text, "transformer": transformer, "vae": vae,
            "pipe": pipe}


def reference_embeddings(pipe, prompts):
    """Wan's prompt embedding by hand: pad to max length, encoder hidden state, zero past the prompt."""
    tok = pipe["tokenizer"](prompts, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe["text"](tok.input_ids, tok.attention_mask).last_hidden_state
    return hidden * tok.attention_mask[..., None]


def test_umt5_text_encoder(pipeline):
    enc = UMT5TextEncoder(pipeline["folder"], max_length=MAX_LEN, torch_dtype="float32")
    prompts = ["a red circle moving left", "the cat on a blue square"]
    got = enc.encode(prompts)
    assert got.shape == (2, MAX_LEN, TEXT_DIM) and enc.dim == TEXT_DIM
    assert torch.equal(got, reference_embeddings(pipeline, prompts))
    with torch.no_grad():  # diffusers' own Wan prompt encoding
        ref, _ = pipeline["pipe"].encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=MAX_LEN)
    assert torch.equal(got, ref)
    assert got[0, 6:].abs().sum() == 0 and got[0, :6].abs().sum(-1).min() > 0  # 5 words + </s>, then zeros
    assert torch.equal(enc.encode(["  a red\ncircle   moving left "]), got[:1])  # cleaned as Wan does
    bf16 = UMT5TextEncoder(pipeline["folder"], max_length=MAX_LEN)  # default bfloat16, as Wan ships it
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert (bf16.encode(prompts).float() - got).abs().max() < 0.1 * got.abs().max()


def test_umt5_folder_without_tokenizer_is_named(tmp_path, pipeline):
    pipeline["text"].save_pretrained(tmp_path / "text_encoder")
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config.json: `pretrained` must be a Wan diffusers"):
        UMT5TextEncoder(str(tmp_path))


def test_wan_vae(pipeline):
    vae = WanVAE(pipeline["folder"])
    assert (vae.latent_channels, vae.temporal_compression, vae.spatial_compression) == (Z, 4, 4)
    assert vae.num_pixel_frames(3) == 9
    video = torch.rand(1, 9, 3, 16, 16) * 2 - 1
    mean = torch.tensor(VAE["latents_mean"]).view(1, 1, Z, 1, 1)
    std = torch.tensor(VAE["latents_std"]).view(1, 1, Z, 1, 1)
    with torch.no_grad():
        z = vae.encode(video)
        mu = pipeline["vae"].encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mean.permute(0, 2, 1, 3, 4)
        assert z.shape == (1, 3, Z, 4, 4)
        assert torch.allclose(z, (mu - mean) / std, atol=1e-6)
        out = vae.decode(z)
        ref = pipeline["vae"].decode((z * std + mean).permute(0, 2, 1, 3, 4)).sample.permute(0, 2, 1, 3, 4)
    assert out.shape == video.shape and torch.allclose(out, ref, atol=1e-6)
    half = WanVAE(pipeline["folder"], torch_dtype="bfloat16")
    assert half.vae.dtype == torch.bfloat16 and half.encode(video).dtype == torch.float32


def test_whole_pipeline_folder(pipeline):
    """Text -> teacher/student x0 -> pixels through the project's classes == the same chain on the source models."""
    folder, prompts = pipeline["folder"], ["a green triangle moving up", "the cat on a red square"]
    text = UMT5TextEncoder(folder, max_length=MAX_LEN, torch_dtype="float32")
    teacher = WanDenoiser(folder, subfolder="transformer").eval()
    student = CausalWanDenoiser(folder, subfolder="transformer", chunk_frames=1).eval()
    vae = WanVAE(folder)
    g = torch.Generator().manual_seed(3)
    x_t, t = torch.randn(2, 3, Z, 4, 4, generator=g), torch.tensor([937.5, 500.0])
    with torch.no_grad():
        cond = text.encode(prompts)
        pixels = vae.decode(teacher(x_t, t, cond))
        ref_cond = reference_embeddings(pipeline, prompts)
        flow = pipeline["transformer"](x_t.permute(0, 2, 1, 3, 4), t, ref_cond, return_dict=False)[0]
        ref_x0 = x_t - (t / 1000).view(2, 1, 1, 1, 1) * flow.permute(0, 2, 1, 3, 4)
        std = torch.tensor(VAE["latents_std"]).view(1, Z, 1, 1, 1)
        mean = torch.tensor(VAE["latents_mean"]).view(1, Z, 1, 1, 1)
        ref_pixels = pipeline["vae"].decode(ref_x0.permute(0, 2, 1, 3, 4) * std + mean).sample
        # the causal student's first chunk attends only to itself: equal to the bidirectional model on one frame
        first = student(x_t[:, :1], t, cond)
        ref_first = teacher(x_t[:, :1], t, cond)
    assert torch.equal(cond, ref_cond)
    assert pixels.shape == (2, 9, 3, 16, 16)
    assert torch.allclose(pixels, ref_pixels.permute(0, 2, 1, 3, 4), atol=1e-5)
    assert torch.allclose(first, ref_first, atol=1e-6)

"""Wan checkpoints in every layout users hold load through the project's denoisers and give the source's outputs
(issue 11 "Loading what users hold"; issue 12: wrong shapes named before any torch traceback)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from streamr1.models import CausalWanDenoiser, WanDenoiser, build_wan_transformer
from streamr1.models.wan_weights import infer_wan_config

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4,
    "out_channels": 4, "text_dim": 16, "freq_dim": 32, "ffn_dim": 32, "num_layers": 2,
}

# diffusers name -> original Wan name (Wan's WanModel: text_embedding/time_embedding Sequentials, self_attn/cross_attn
# q/k/v/o, ffn.0/ffn.2, norm3 = the affine cross-attention norm, per-block and head `modulation`, head.head).
# Written here only to *make* original-format test files; the loader uses diffusers' conversion, and
# test_inverse_names_round_trip checks these names are what that conversion reads.
_INVERSE = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), ("proj_out", "head.head"),
]


def original_name(key: str) -> str:
    for new, old in _INVERSE:
        key = key.replace(new, old)
    key = key.replace("norm2", "#").replace("norm3", "norm2").replace("#", "norm3")
    if key == "scale_shift_table":
        return "head.modulation"
    return key.replace("scale_shift_table", "modulation")


def to_original(sd: dict, prefix: str = "") -> dict:
    return {prefix + original_name(k): v.clone() for k, v in sd.items()}


def source(seed: int = 0, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**CONFIG, **overrides}).eval()


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 4, 8, 8, generator=g)
    cond = torch.randn(2, 5, 16, generator=g)
    return x, torch.tensor([937.5, 250.0]), cond


def assert_same_outputs(model: WanTransformer3DModel, pretrained: str, config: dict | None = CONFIG, **kwargs):
    """The source model and the project's WanDenoiser/CausalWanDenoiser loaded from ``pretrained`` agree."""
    x, t, cond = inputs()
    with torch.no_grad():
        ref = WanDenoiser(config=CONFIG)
        ref.transformer = model
        want = ref(x, t, cond)
        got = WanDenoiser(pretrained=pretrained, config=config, **kwargs).eval()(x, t, cond)
        assert torch.equal(got, want)
        student = CausalWanDenoiser(pretrained=pretrained, config=config, chunk_frames=3, **kwargs).eval()
        source_student = CausalWanDenoiser(config=CONFIG, chunk_frames=3)
        source_student.causal.transformer.load_state_dict(model.state_dict())
        assert torch.equal(student(x, t, cond), source_student(x, t, cond))


def test_inverse_names_round_trip():
    """The test's original names are the real Wan ones, and diffusers' conversion maps them back exactly."""
    sd = source().state_dict()
    orig = to_original(sd)
    for key in ("blocks.0.self_attn.q.weight", "blocks.1.cross_attn.o.bias", "blocks.0.norm3.weight",
                "blocks.0.ffn.0.weight", "blocks.0.modulation", "head.modulation", "head.head.weight",
                "time_projection.1.weight", "text_embedding.2.bias", "blocks.0.self_attn.norm_q.weight"):
        assert key in orig
    back = convert_wan_transformer_to_diffusers(dict(orig))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_diffusers_folder_and_files(tmp_path):
    model = source()
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    assert_same_outputs(model, str(tmp_path / "pipe"), config=None, subfolder="transformer")
    assert_same_outputs(model, str(tmp_path / "pipe"), config=None)  # a pipeline folder: transformer/ is found
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no Wan transformer weights \(found: \[\]\)"):
        WanDenoiser(pretrained=str(tmp_path / "empty"))
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    assert_same_outputs(model, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    assert_same_outputs(model, str(tmp_path / "w.pt"))


@pytest.mark.parametrize("prefix", ["", "model."])
@pytest.mark.parametrize("nesting", ["flat", "generator", "state_dict"])
def test_original_keys_flat_or_nested(tmp_path, prefix, nesting):
    model = source()
    sd = to_original(model.state_dict(), prefix)
    obj = sd if nesting == "flat" else {nesting: sd, "step": 7}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    assert_same_outputs(model, str(path))
    if nesting == "flat":
        assert_same_outputs(model, str(path), checkpoint_key="none")
    else:
        assert_same_outputs(model, str(path), checkpoint_key=nesting)
        with pytest.raises(ValueError, match=r"has no tensors at its top level \(top-level keys: \['" + nesting):
            WanDenoiser(pretrained=str(path), config=CONFIG, checkpoint_key="none")


def test_original_keys_safetensors(tmp_path):
    model = source()
    save_file(to_original(model.state_dict(), "model.diffusion_model."), tmp_path / "wan.safetensors")
    assert_same_outputs(model, str(tmp_path / "wan.safetensors"))


def test_self_forcing_file_picks_ema_by_default_and_generator_on_request(tmp_path, capsys):
    """``{"generator": sd, "generator_ema": sd}`` with ``model.``-prefixed original keys (Self-Forcing's files)."""
    gen, ema = source(seed=0), source(seed=1)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": to_original(gen.state_dict(), "model."),
                "generator_ema": to_original(ema.state_dict(), "model.")}, path)
    assert_same_outputs(ema, str(path))
    out = capsys.readouterr().out
    assert "state dict under 'generator_ema'" in out and "prefix 'model.' stripped" in out and "original" in out
    assert_same_outputs(gen, str(path), checkpoint_key="generator")
    assert "state dict under 'generator'" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"no state dict under 'critic' \(nested dicts found: \['generator', "
                                         r"'generator_ema'\]\)"):
        WanDenoiser(pretrained=str(path), config=CONFIG, checkpoint_key="critic")
    torch.save({"generator": to_original(gen.state_dict(), "model."),
                "critic": to_original(ema.state_dict(), "model.")}, path)  # any key name can be asked for
    assert_same_outputs(ema, str(path), checkpoint_key="critic")


def test_original_folder_sharded_without_config(tmp_path):
    """``Wan-AI/Wan2.1-T2V-*`` layout: original config.json, sharded safetensors and their index; no `config`."""
    model = source()
    sd = to_original(model.state_dict())
    folder = tmp_path / "Wan2.1-T2V-tiny"
    folder.mkdir()
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 16, "eps": 1e-06, "ffn_dim": 32,
        "freq_dim": 32, "in_dim": 4, "model_type": "t2v", "num_heads": 2, "num_layers": 2, "out_dim": 4,
        "text_len": 512}))
    (folder / "Wan2.1_VAE.pth").write_bytes(b"not read")  # the original folder's other files are left alone
    assert_same_outputs(model, str(folder), config=None)


def test_config_read_off_the_weights(tmp_path):
    shapes = {k: tuple(v.shape) for k, v in source().state_dict().items()}
    inferred = infer_wan_config(shapes, num_attention_heads=2)
    assert {k: inferred[k] for k in CONFIG} == CONFIG
    assert inferred["cross_attn_norm"] is True and inferred["qk_norm"] == "rms_norm_across_heads"
    # without a head count, 128-wide heads (Wan's): one head of 128 here
    model = source(num_attention_heads=1, attention_head_dim=128, num_layers=1)
    torch.save({"generator": to_original(model.state_dict(), "model.")}, tmp_path / "ode_init.pt")
    loaded = build_wan_transformer(str(tmp_path / "ode_init.pt"))
    assert loaded.config.num_attention_heads == 1 and loaded.config.attention_head_dim == 128
    assert loaded.config.num_layers == 1 and list(loaded.config.patch_size) == [1, 2, 2]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_wrong_shapes_named_before_any_load(tmp_path, monkeypatch):
    """Issue 12: the file, the count, one example and the fix; ``load_state_dict`` is never reached."""
    path = tmp_path / "student.pt"
    torch.save({"generator": to_original(source().state_dict(), "model.")}, path)

    def never(*args, **kwargs):
        raise AssertionError("load_state_dict called before the shape check")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", never)
    with pytest.raises(ValueError) as err:
        CausalWanDenoiser(pretrained=str(path), config={**CONFIG, "ffn_dim": 48})
    msg = str(err.value)
    assert msg.startswith(f"{path} (original keys, state dict under 'generator', prefix 'model.' stripped) does not "
                          "fit the architecture in `config`: 6 tensors of another shape (e.g. blocks.0.ffn.net.0.proj")
    assert "expected [48, 16], found [32, 16]" in msg
    assert "The file holds a model with {'ffn_dim': 32}; the given `config` says {'ffn_dim': 48}" in msg
    assert "Fix: set `config` to the checkpoint's architecture" in msg
    with pytest.raises(ValueError, match=r"does not fit .*: 27 missing \(e.g. \['blocks.2.scale_shift_table"):
        WanDenoiser(pretrained=str(path), config={**CONFIG, "num_layers": 3})


def test_a_file_holding_several_models_needs_key_prefix(tmp_path):
    """A Lightning checkpoint of this project holds student, critic and teacher: the prefix picks one."""
    student, critic = source(seed=0), source(seed=1)
    sd = {**{f"student.causal.transformer.{k}": v for k, v in student.state_dict().items()},
          **{f"critic.transformer.{k}": v for k, v in critic.state_dict().items()}}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "global_step": 3}, path)
    with pytest.raises(ValueError, match=r"holds several Wan models, under the key prefixes \['critic.transformer.', "
                                         r"'student.causal.transformer.'\]: set `key_prefix`"):
        WanDenoiser(pretrained=str(path), config=CONFIG)
    assert_same_outputs(student, str(path), key_prefix="student.causal.transformer.")
    with pytest.raises(ValueError, match=r"no key starts with key_prefix 'generator.model.'"):
        WanDenoiser(pretrained=str(path), config=CONFIG, key_prefix="generator.model.")


def test_unknown_layout_names_keys_and_known_layouts(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.zeros(2), "decoder.out.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError) as err:
        WanDenoiser(pretrained=str(path), config=CONFIG)
    msg = str(err.value)
    assert msg.startswith(f"{path}: unknown checkpoint layout (2 keys, e.g. ['decoder.out.bias', "
                          "'encoder.layer.0.weight'])")
    assert "Known layouts: diffusers WanTransformer3DModel keys" in msg and "original Wan keys" in msg
    with pytest.raises(ValueError, match=r"is a safetensors file, which is flat: checkpoint_key='generator'"):
        WanDenoiser(pretrained=str(path), config=CONFIG, checkpoint_key="generator")


def test_diffusers_folder_config_mismatch_is_refused(tmp_path):
    source().save_pretrained(tmp_path / "t")
    with pytest.raises(ValueError, match=r"config.json describes another architecture .*'num_layers': \(2, 3\)"):
        WanDenoiser(pretrained=str(tmp_path / "t"), config={**CONFIG, "num_layers": 3})


class _Float32Bytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the bytes of every float32 tensor an op creates off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor) and o.dtype == torch.float32 and o.device.type != "meta":
                self.bytes += o.numel() * o.element_size()
        return out


def test_bf16_loads_without_a_float32_copy(tmp_path):
    """A bf16 checkpoint loaded with ``torch_dtype: bfloat16`` never creates the model in float32: float32 tensors
    made during loading are only the float32-kept modules and the rotary tables, not the model."""
    config = {**CONFIG, "num_attention_heads": 4, "attention_head_dim": 16, "ffn_dim": 512, "num_layers": 4,
              "rope_max_seq_len": 32}
    model = WanTransformer3DModel(**config).to(torch.bfloat16)
    torch.save({"generator": to_original(model.state_dict(), "model.")}, tmp_path / "teacher.pt")
    with _Float32Bytes() as counter:
        loaded = build_wan_transformer(str(tmp_path / "teacher.pt"), config, torch_dtype="bfloat16")
    keep = tuple(loaded._keep_in_fp32_modules)
    params = dict(loaded.named_parameters())
    fp32 = {n for n, p in params.items() if p.dtype == torch.float32}
    assert fp32 == {n for n in params if any(m in n.split(".") for m in keep)}
    assert all(p.dtype == torch.bfloat16 for n, p in params.items() if n not in fp32)
    kept = sum(params[n].numel() * 4 for n in fp32) + sum(b.numel() * b.element_size() for b in loaded.buffers())
    full = sum(p.numel() * 4 for p in params.values())
    assert counter.bytes <= 2 * kept < full / 10, (counter.bytes, kept, full)
    for k, v in model.state_dict().items():  # bf16 values unchanged; float32-kept ones exact upcasts
        assert torch.equal(loaded.state_dict()[k].to(torch.bfloat16), v)
    # the same dtypes as diffusers' from_pretrained(torch_dtype=bfloat16) of the same weights
    model.save_pretrained(tmp_path / "diffusers")
    folder = build_wan_transformer(str(tmp_path / "diffusers"), torch_dtype="bfloat16")
    assert {n: p.dtype for n, p in folder.named_parameters()} == {n: p.dtype for n, p in params.items()}
    assert all(torch.equal(folder.state_dict()[k], v) for k, v in loaded.state_dict().items())
    # with keep_fp32_modules=False everything is bf16 (one dtype per FSDP2 group of trainable parameters)
    flat = build_wan_transformer(str(tmp_path / "teacher.pt"), config, torch_dtype="bf16", keep_fp32_modules=False)
    assert {p.dtype for p in flat.parameters()} == {torch.bfloat16}


def test_bf16_denoiser_uses_the_float32_timestep_it_gave_the_model():
    """937.5 in bf16 is 936: t must reach the transformer in float32 and x0 = x_t - (t/1000) v use that same t."""
    assert torch.tensor(937.5).to(torch.bfloat16).item() == 936.0
    x, t, cond = inputs()
    per_frame = t[:, None].expand(2, 6).clone()
    for denoiser in (WanDenoiser(config=CONFIG, torch_dtype="bfloat16"),
                     CausalWanDenoiser(config=CONFIG, torch_dtype="bfloat16", chunk_frames=3)):
        assert denoiser.transformer.dtype == torch.bfloat16
        for tt in (t, per_frame):
            seen: list[torch.Tensor] = []
            hook = denoiser.transformer.register_forward_pre_hook(lambda m, a, k, s=seen: s.append(a[1]),
                                                                  with_kwargs=True)
            with torch.no_grad():
                x0 = denoiser(x, tt, cond)
            hook.remove()
            assert seen[-1].dtype == torch.float32 and seen[-1].flatten()[0].item() == 937.5
            assert x0.dtype == torch.float32
    denoiser = WanDenoiser(config=CONFIG, torch_dtype="bfloat16")
    with torch.no_grad():
        flow, x0 = denoiser.flow(x, t, cond), denoiser(x, t, cond)
    assert torch.equal(x0, x - torch.tensor([0.9375, 0.25]).view(2, 1, 1, 1, 1) * flow)

"""LoRA through peft: only adapters train (optimizer, EMA), checkpoints and exact resume, merged and adapter export."""

from __future__ import annotations

import glob
import os

import lightning.pytorch as pl
import pytest
import torch
from diffusers import WanTransformer3DModel
from lightning.pytorch.callbacks import ModelCheckpoint

from streamr1.args import DMDArgs
from streamr1.callbacks.ema import StudentEMA
from streamr1.checkpoint import AtomicCheckpointIO
from streamr1.data import PromptDataModule
from streamr1.export import export_student
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser
from streamr1.models.lora import LoRAArgs, apply_lora, merged_copy, save_adapter
from streamr1.module import DMDModule
from tests.helpers import WAN_TINY, LossRecorder

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = {"rank": 4, "alpha": 8.0}
TARGETS = 2 * 2 * 4  # 2 blocks x (self, cross attention) x (to_q, to_k, to_v, to_out.0)


def _randomize_adapters(model: torch.nn.Module, seed: int = 3) -> None:
    """LoRA's B starts at zero (the adapted model equals its base); give it values so that merging is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 3, 2, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 4, 16, generator=g))


def test_adapters_start_at_the_base_and_only_they_train():
    torch.manual_seed(0)
    base = WanDenoiser(config=WAN_TINY)
    torch.manual_seed(0)
    adapted = WanDenoiser(config=WAN_TINY, lora=LORA)
    trainable = {n: p for n, p in adapted.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * TARGETS and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # r x (in + out) per adapted 16 -> 16 linear layer (2 heads x 8)
    assert sum(p.numel() for p in trainable.values()) == TARGETS * 4 * (16 + 16)
    x = torch.randn(1, 2, 3, 8, 8)
    t, c = torch.tensor([400.0]), torch.randn(1, 4, 16)
    assert torch.equal(base(x, t, c), adapted(x, t, c))  # B = 0


def test_bad_lora_settings_are_refused():
    with pytest.raises(ValueError, match="lora.rank must be >= 1"):
        LoRAArgs(rank=0)
    with pytest.raises(ValueError, match=r"match no linear layer.*linear layers are \[.*to_q"):
        apply_lora(WanTransformer3DModel(**WAN_TINY), {"rank": 2, "target_modules": ["qkv"]})
    with pytest.raises(ValueError, match="Unknown lora keys"):
        apply_lora(WanTransformer3DModel(**WAN_TINY), {"rank": 2, "ranks": 3})


def test_merged_export_loads_without_meta_tensors_and_matches_the_adapted_model(tmp_path):
    torch.manual_seed(0)
    model = apply_lora(WanTransformer3DModel(**WAN_TINY), LORA)
    _randomize_adapters(model)
    merged = merged_copy(model)
    # the merge is W + (alpha / r) B A, by hand for one layer
    layer = model.blocks[0].attn1.to_q
    by_hand = layer.base_layer.weight + (8.0 / 4) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(merged.blocks[0].attn1.to_q.weight, by_hand, rtol=0, atol=1e-6)
    merged.save_pretrained(str(tmp_path / "m"))
    loaded = WanTransformer3DModel.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    assert not [n for n, p in loaded.named_parameters() if p.is_meta]
    assert loaded.state_dict().keys() == WanTransformer3DModel(**WAN_TINY).state_dict().keys()
    x, t, c = _inputs()
    expected = model(x, t, c, return_dict=False)[0]
    assert (loaded(x, t, c, return_dict=False)[0] - expected).abs().max() < 1e-5
    assert any(".lora_" in k for k in model.state_dict())  # the source model keeps its adapters


def test_adapter_only_export_reloads_with_peft(tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    model = apply_lora(WanTransformer3DModel(**WAN_TINY), LORA)
    _randomize_adapters(model)
    save_adapter(model, str(tmp_path / "adapter"))
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    torch.manual_seed(0)
    base = WanTransformer3DModel(**WAN_TINY)  # the same base weights
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    x, t, c = _inputs()
    torch.testing.assert_close(reloaded(x, t, c, return_dict=False)[0], model(x, t, c, return_dict=False)[0],
                               rtol=0, atol=1e-6)


# ------------------------------------------------------------------ training: optimizer, EMA, checkpoint, resume
PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.0, 0.999), weight_decay=0.01)


def _module(critic_lora: bool = False) -> DMDModule:
    torch.manual_seed(0)
    return DMDModule(
        student=CausalWanDenoiser(config=WAN_TINY, chunk_frames=2, lora=LORA),
        teacher=WanDenoiser(config=WAN_TINY),
        critic=WanDenoiser(config=WAN_TINY, lora=LORA if critic_lora else None),
        text_encoder=HashTextEncoder(dim=16, length=4), vae=IdentityVAE(), latent_shape=(4, 3, 8, 8),
        dmd=DMDArgs(student_every=2, critic_init_from_student=True),
        student_optimizer=_adamw, critic_optimizer=_adamw)


def _fit(root, ckpt_path=None, save=False, max_steps=9, critic_lora=False):
    pl.seed_everything(123)
    m, rec, ema = _module(critic_lora), LossRecorder(), StudentEMA(decay=0.5)
    callbacks = [rec, ema] + ([ModelCheckpoint(dirpath=str(root), every_n_train_steps=5, save_top_k=-1)]
                              if save else [])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=str(root),
                         plugins=[AtomicCheckpointIO()], callbacks=callbacks, enable_checkpointing=save)
    trainer.fit(m, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=2, seed=1, samples_per_epoch=8),
                ckpt_path=ckpt_path)
    return m, rec, ema, trainer


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_fit")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = _module().student.state_dict()
        full = _fit(root / "full", save=True)
        resumed = _fit(root / "resumed", ckpt_path=glob.glob(str(root / "full" / "*step=5.ckpt"))[0])
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(threads)
    return root, before, full, resumed


def test_only_the_adapters_train_and_the_optimizer_and_ema_hold_only_them(lora_run):
    root, before, (m, _, ema, _), _ = lora_run
    adapters = {n for n, p in m.student.named_parameters() if p.requires_grad}
    assert len(adapters) == 2 * TARGETS and all(".lora_" in n for n in adapters)
    opt_s, _ = m.optimizers()
    assert {id(p) for g in opt_s.param_groups for p in g["params"]} == \
        {id(p) for n, p in m.student.named_parameters() if n in adapters}
    assert set(ema.shadow) == adapters
    after = m.student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".lora_" in k for k in changed)  # the frozen base never moved


def test_the_checkpoint_holds_adapters_optimizer_and_ema(lora_run):
    root, _, (m, *_), _ = lora_run
    ckpt = torch.load(glob.glob(str(root / "full" / "*step=5.ckpt"))[0], weights_only=True)
    adapters = [n for n, p in m.student.named_parameters() if p.requires_grad]
    assert all(f"student.{n}" in ckpt["state_dict"] for n in adapters)
    student_state, critic_state = ckpt["optimizer_states"]
    assert len(student_state["state"]) == len(adapters)  # AdamW moments of the adapters only
    assert len(critic_state["state"]) == len(list(m.critic.parameters()))  # the full critic trains
    (shadow,) = [v["shadow"] for k, v in ckpt["callbacks"].items() if k.startswith("StudentEMA")]
    assert set(shadow) == set(adapters)


def test_resume_is_exact(lora_run):
    _, _, (full_m, full_rec, full_ema, _), (res_m, res_rec, res_ema, _) = lora_run
    assert res_rec.losses == [e for e in full_rec.losses if e[1] >= 3]
    for k, v in full_m.student.state_dict().items():
        assert torch.equal(v, res_m.student.state_dict()[k]), k
    assert all(torch.equal(full_ema.shadow[k], res_ema.shadow[k]) for k in full_ema.shadow)


def test_export_merges_the_ema_adapters(lora_run, tmp_path):
    root = lora_run[0]
    ckpt_path = glob.glob(str(root / "full" / "*step=5.ckpt"))[0]
    export_student(_module(), str(tmp_path / "out"), ckpt_path=ckpt_path)
    loaded = WanTransformer3DModel.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    assert not [n for n, p in loaded.named_parameters() if p.is_meta]
    # by hand from the checkpoint: frozen base + (alpha / r) B_ema A_ema on adapted layers, the base elsewhere
    ckpt = torch.load(ckpt_path, weights_only=True)
    (ema,) = [v["shadow"] for k, v in ckpt["callbacks"].items() if k.startswith("StudentEMA")]
    sd = {k[len("student.causal.transformer."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    got = loaded.state_dict()
    for name, value in got.items():
        layer, _, kind = name.rpartition(".")
        if f"{layer}.base_layer.{kind}" not in sd:
            assert torch.equal(value, sd[name]), name
            continue
        expected = sd[f"{layer}.base_layer.{kind}"]
        if kind == "weight":
            pre = f"causal.transformer.{layer}"
            expected = expected + (8.0 / 4) * ema[f"{pre}.lora_B.default.weight"] @ ema[f"{pre}.lora_A.default.weight"]
        assert (value - expected).abs().max() < 1e-6, name
    export_student(_module(), str(tmp_path / "adapter"), ckpt_path=ckpt_path, adapter_only=True)
    assert os.path.isfile(tmp_path / "adapter" / "adapter_model.safetensors")


def test_a_lora_critic_initialises_from_a_lora_student_and_trains_only_its_adapters(tmp_path):
    m, *_ = _fit(tmp_path, max_steps=2, critic_lora=True)
    opt_s, opt_c = m.optimizers()
    critic_adapters = {id(p) for n, p in m.critic.named_parameters() if ".lora_" in n}
    assert {id(p) for g in opt_c.param_groups for p in g["params"]} == critic_adapters


def test_plain_state_dict_equals_the_merged_model_without_copying_it():
    from streamr1.models.lora import plain_state_dict

    torch.manual_seed(0)
    model = apply_lora(WanTransformer3DModel(**WAN_TINY), LORA)
    _randomize_adapters(model)
    plain, merged = plain_state_dict(model), merged_copy(model).state_dict()
    assert plain.keys() == merged.keys()
    assert max(float((plain[k] - merged[k]).abs().max()) for k in plain) < 1e-6


def test_lora_from_the_command_line_fits_and_exports(tmp_path):
    """configs/lora.yaml layered on a recipe: fit, then ``export`` merged and ``--adapter_only true``."""
    from streamr1.cli import main

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
    recipe = ["--config", os.path.join(configs, "tiny_random.yaml"), "--config", os.path.join(configs, "lora.yaml")]
    extra = tmp_path / "run.yaml"
    extra.write_text(f"""
trainer: {{logger: false, max_steps: 3, enable_checkpointing: true, default_root_dir: {tmp_path}}}
checkpoint: {{dirpath: {tmp_path / "ckpt"}}}
""")
    main(["fit", *recipe, "--config", str(extra)])
    ckpt = str(tmp_path / "ckpt" / "last.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert sum(".lora_A." in k for k in state) == TARGETS  # 2 blocks x 2 attentions x 4 projections
    main(["export", *recipe, "--config", str(extra), "--ckpt_path", ckpt, "--output_dir", str(tmp_path / "merged")])
    loaded = WanTransformer3DModel.from_pretrained(str(tmp_path / "merged"), local_files_only=True)
    assert not [n for n, p in loaded.named_parameters() if p.is_meta]
    main(["export", *recipe, "--config", str(extra), "--ckpt_path", ckpt, "--output_dir", str(tmp_path / "adapter"),
          "--adapter_only", "true"])
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]

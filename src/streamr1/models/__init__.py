"""Models: the causal student, bidirectional Wan denoisers, text encoders and VAEs."""

from streamr1.models.student import CausalWanDenoiser
from streamr1.models.text import CachedTextEncoder, HashTextEncoder, UMT5TextEncoder
from streamr1.models.vae import IdentityVAE, WanVAE
from streamr1.models.wan import WanDenoiser, build_wan_transformer
from streamr1.models.wan_weights import CHECKPOINT_KEYS, infer_wan_config, load_wan_transformer

__all__ = [
    "CausalWanDenoiser", "WanDenoiser", "build_wan_transformer", "load_wan_transformer", "infer_wan_config",
    "CHECKPOINT_KEYS",
    "HashTextEncoder", "UMT5TextEncoder", "CachedTextEncoder", "IdentityVAE", "WanVAE",
]

"""Models: the causal student, bidirectional Wan denoisers, text encoders and VAEs.

The names below are imported on first use (PEP 562): ``import streamr1.models.lora`` (which the module needs) does
not import diffusers and peft (about 12 s on a loaded 2-core machine), so ``streamr1 fit --help`` does not either.
"""

from typing import TYPE_CHECKING

from streamr1.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from streamr1.models.student import CausalWanDenoiser
    from streamr1.models.text import CachedTextEncoder, HashTextEncoder, UMT5TextEncoder
    from streamr1.models.vae import IdentityVAE, WanVAE
    from streamr1.models.wan import WanDenoiser, build_wan_transformer
    from streamr1.models.wan_weights import CHECKPOINT_KEYS, infer_wan_config, load_wan_transformer

_WHERE = {
    "CausalWanDenoiser": "student", "CachedTextEncoder": "text", "HashTextEncoder": "text",
    "UMT5TextEncoder": "text", "IdentityVAE": "vae", "WanVAE": "vae", "WanDenoiser": "wan",
    "build_wan_transformer": "wan", "CHECKPOINT_KEYS": "wan_weights", "infer_wan_config": "wan_weights",
    "load_wan_transformer": "wan_weights",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())

__all__ = [
    "CausalWanDenoiser", "WanDenoiser", "build_wan_transformer", "load_wan_transformer", "infer_wan_config",
    "CHECKPOINT_KEYS",
    "HashTextEncoder", "UMT5TextEncoder", "CachedTextEncoder", "IdentityVAE", "WanVAE",
]

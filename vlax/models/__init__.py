"""PaliGemma-architecture VLA in Flax linen: config, presets, the model batch, model, sharding
rules, decoding."""

from vlax.models.batch import Batch, ModelInputs
from vlax.models.config import GemmaConfig, SigLIPConfig, VLAConfig
from vlax.models.presets import PRESETS, count_params, decode_flops, forward_flops, get_preset
from vlax.models.vla import VLA, example_inputs, init_params

__all__ = [
    "GemmaConfig", "SigLIPConfig", "VLAConfig", "PRESETS", "get_preset", "count_params",
    "forward_flops", "decode_flops", "VLA", "example_inputs", "init_params", "Batch",
    "ModelInputs",
]

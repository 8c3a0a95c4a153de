"""visattn: visual attention that is correct, fast and visible.

The public API in one place::

    import visattn
    att = visattn.create_attention("additive", key_dim=128, query_dim=256)
    model = visattn.build_model("classifier")
    model = visattn.load("runs/x/best.safetensors")      # rebuilt from the checkpoint alone
"""

from visattn.attention import (
    Attention,
    AttentionKeys,
    HardAttentionSample,
    VisualAttention,
    create_attention,
    list_attentions,
)
from visattn.checkpoint import CheckpointError
from visattn.encoders import EncoderConfig, create_encoder
from visattn.engine import TaskSpec, TrainConfig, fit
from visattn.models import build_model, list_models, load

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "AttentionKeys",
    "CheckpointError",
    "EncoderConfig",
    "HardAttentionSample",
    "TaskSpec",
    "TrainConfig",
    "VisualAttention",
    "build_model",
    "create_attention",
    "create_encoder",
    "fit",
    "list_attentions",
    "list_models",
    "load",
    "__version__",
]

"""visattn: visual attention that is correct, fast and visible.

The public API in one place::

    import visattn
    att = visattn.create_attention("additive", key_dim=128, query_dim=256)
    model = visattn.build_model("classifier")
    model = visattn.load("runs/x/best.safetensors")      # rebuilt from the checkpoint alone
    predictor = visattn.Predictor.from_checkpoint("runs/x/best.safetensors")
    results = predictor.predict(["a.png", "b.png"])       # typed results with their attention maps
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
from visattn.engine import TrainConfig, fit
from visattn.models import build_model, list_models, load
from visattn.predictor import Predictor
from visattn.results import CaptionHypothesis, CaptionResult, ClassifyResult, DetectResult
from visattn.tasks import Task, get_task, list_tasks

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "AttentionKeys",
    "CheckpointError",
    "EncoderConfig",
    "HardAttentionSample",
    "Task",
    "Predictor",
    "ClassifyResult",
    "CaptionResult",
    "CaptionHypothesis",
    "DetectResult",
    "get_task",
    "list_tasks",
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

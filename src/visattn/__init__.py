"""visattn: visual attention that is correct, fast and visible.

The public API in one place::

    import visattn
    att = visattn.create_attention("additive", key_dim=128, query_dim=256)
    model = visattn.build_model("classifier")
    model = visattn.load("runs/x/best.safetensors")      # rebuilt from the checkpoint alone
    predictor = visattn.Predictor.from_checkpoint("runs/x/best.safetensors")
    results = predictor.predict(["a.png", "b.png"])       # typed results with their attention maps
"""

import importlib
from typing import Any

# Name -> module. Imported on first use (PEP 562), so that ``visattn.runtime`` runs without PyTorch:
# importing any submodule runs this file, and every module named here imports torch.
_EXPORTS = {
    **dict.fromkeys(("Attention", "AttentionKeys", "HardAttentionSample", "VisualAttention", "create_attention",
                     "list_attentions"), "visattn.attention"),
    "CheckpointError": "visattn.checkpoint",
    **dict.fromkeys(("EncoderConfig", "create_encoder"), "visattn.encoders"),
    **dict.fromkeys(("TrainConfig", "fit"), "visattn.engine"),
    **dict.fromkeys(("build_model", "list_models", "load"), "visattn.models"),
    "Predictor": "visattn.predictor",
    **dict.fromkeys(("CaptionHypothesis", "CaptionResult", "ClassifyResult", "DetectResult"), "visattn.results"),
    **dict.fromkeys(("Task", "get_task", "list_tasks"), "visattn.tasks"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'visattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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

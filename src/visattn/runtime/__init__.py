"""Run exported models without PyTorch: numpy, Pillow and ONNX Runtime only.

    from visattn.runtime import OnnxPredictor
    predictor = OnnxPredictor("exported/cap")          # a folder written by `visattn export --format onnx`
    results = predictor.predict(["a.png", "b.png"], beam_size=3)

The results have the fields and ``to_dict()`` of :class:`visattn.Predictor`'s (numpy arrays where those hold
tensors); captions come from a numpy beam search that returns the tokens of ``Captioner.generate``. Nothing
here imports torch (a test runs this package with torch blocked).
"""

from visattn.runtime.predictor import ExportFolderError, OnnxPredictor, PreparedArrays, read_export
from visattn.results import CaptionHypothesis, CaptionResult, ClassifyResult, DetectResult, Result
from visattn.runtime.search import SearchHypothesis, beam_search, greedy_search

__all__ = ["OnnxPredictor", "ExportFolderError", "PreparedArrays", "read_export", "ClassifyResult",
           "CaptionHypothesis", "CaptionResult", "DetectResult", "Result", "SearchHypothesis", "beam_search",
           "greedy_search"]

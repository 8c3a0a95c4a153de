"""``visattn serve``: a local web page showing where a model looked, over a small JSON API.

Needs the optional extra ``serve`` (``pip install 'visattn[serve]'``: FastAPI, uvicorn, python-multipart).
"""

from visattn.serve.app import create_app, describe_model
from visattn.serve.pool import InferencePool, PoolClosed, QueueFull

__all__ = ["create_app", "describe_model", "InferencePool", "PoolClosed", "QueueFull"]

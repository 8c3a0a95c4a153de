"""Tasks: what the engine and the Predictor drive (one :class:`~visattn.tasks.base.Task` per file).

``get_task("classify" | "caption" | "detect", **options)`` builds one; the task modules are imported on
first use, so importing this package imports no model code.
"""

from visattn.tasks.base import Task, get_task, list_tasks, register_task, unwrap

__all__ = ["Task", "get_task", "list_tasks", "register_task", "unwrap"]

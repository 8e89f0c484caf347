"""Tasks, loading, formatting and metrics: the data side of a run, under the name the project has always used.

The code lives in the library package, one module per job:
    residual_prompts.tasks    the task registry (keyword data) and get_task
    residual_prompts.data     formatting, tokenization, loading and row checks, splits, few-shot, fingerprint
    residual_prompts.metrics  the original's metrics, the official ones, the constant baseline
This module re-exports their public names, so ``data_utils.get_task``, ``data_utils.build_splits`` and
``data_utils.evaluate`` keep working for scripts and notebooks.
"""
from residual_prompts.data import *  # noqa: F401,F403
from residual_prompts.errors import DataError  # noqa: F401
from residual_prompts.metrics import *  # noqa: F401,F403
from residual_prompts.tasks import *  # noqa: F401,F403

"""Experiment tracking (--report_to): TensorBoard or Weights & Biases, imported only when asked for.

A tracker gets the run's arguments once (config), then every record of metrics.jsonl: step loss, learning_rate and
grad_norm every --log_every_steps steps, each epoch's summary with its validation metrics (eval_accuracy, eval_loss,
...: Hugging Face's names, residual_prompts.metrics.HF_NAMES), and the run's summary (train_loss, train_runtime) at
the end. Only rank 0 reports.
"""
from __future__ import annotations

import numbers

import run_files
from residual_prompts.errors import ConfigError


class NoTracker:
    def log(self, record: dict):
        pass

    def close(self):
        pass


class TensorBoard(NoTracker):
    """Event files under RUN_DIR/tensorboard (tensorboard --logdir RUN_DIR); scalars keyed train/* and eval/*."""

    def __init__(self, log_dir, config: dict):
        check_available("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)
        self.writer.add_text("args", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())))

    def log(self, record: dict):
        step = record["step"]
        for key, value in _scalars(record):
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB(NoTracker):
    def __init__(self, run_name, config: dict):
        check_available("wandb")
        import wandb

        self.run = wandb.init(name=run_name, config=config)

    def log(self, record: dict):
        self.run.log(dict(_scalars(record)), step=record["step"])

    def close(self):
        self.run.finish()


def _scalars(record):
    """(tag, number) pairs, tagged as transformers' TensorBoardCallback rewrites the Trainer's logs: eval_* ->
    eval/*, test_* -> test/*, the rest -> train/* (eval_accuracy -> eval/accuracy, loss -> train/loss); epoch and
    step are the x axis, NaN is left out. Every key is a metrics.jsonl name: the tags are those names."""
    for key, value in record.items():
        if key in ("epoch", "step") or not isinstance(value, numbers.Number) or value != value:
            continue
        prefix = next((p for p in ("eval", "test") if key.startswith(p + "_")), None)
        yield (f"{prefix}/{key[len(prefix) + 1:]}" if prefix else f"train/{key}"), float(value)


def check_available(kind: str) -> None:
    """Refuse --report_to KIND before the run starts when its package is missing."""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(kind)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"--report_to {kind} needs the {package} package: pip install {package}, or use "
                          f"--report_to none")


def make_tracker(kind: str, run_dir: str, run_name: str, config: dict):
    if kind == "tensorboard":
        import os

        return TensorBoard(os.path.join(run_dir, run_files.TENSORBOARD_DIR), config)
    if kind == "wandb":
        return WandB(run_name, config)
    return NoTracker()

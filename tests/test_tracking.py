"""--report_to wandb without a wandb server: the tracker's calls on a stand-in module (what it gives wandb), and the
refusal when the package is missing. TensorBoard is tested for real in tests/test_outputs.py."""
import importlib.util
import sys
import types

import pytest

import tracking
from residual_prompts.errors import ConfigError


class FakeRun:
    def __init__(self):
        self.logged, self.finished = [], False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_tracker_sends_config_step_losses_and_evaluations(monkeypatch):
    calls = {}

    def init(name, config):
        calls.update(name=name, config=config)
        calls["run"] = FakeRun()
        return calls["run"]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.setattr(tracking, "check_available", lambda kind: None)  # the stand-in has no spec on disk
    tracker = tracking.make_tracker("wandb", "/unused", "cb-run", {"lr": 0.3, "task": "cb"})
    tracker.log({"epoch": 0.5, "step": 2, "loss": 1.5, "learning_rate": 0.3, "grad_norm": 0.7})
    tracker.log({"epoch": 1.0, "step": 4, "epoch_loss": 1.2, "eval_score": 0.5, "eval_accuracy": 0.5,
                 "eval_f1": 0.25, "eval_loss": float("nan"), "test_accuracy": 0.4})
    tracker.close()
    run = calls["run"]
    assert calls["name"] == "cb-run" and calls["config"] == {"lr": 0.3, "task": "cb"}
    # transformers' TensorBoardCallback tags: eval_x -> eval/x, test_x -> test/x, the rest train/x
    assert run.logged == [(2, {"train/loss": 1.5, "train/learning_rate": 0.3, "train/grad_norm": 0.7}),
                          (4, {"train/epoch_loss": 1.2, "eval/score": 0.5, "eval/accuracy": 0.5, "eval/f1": 0.25,
                               "test/accuracy": 0.4})]  # NaN left out
    assert run.finished


@pytest.mark.parametrize("kind", ["wandb", "tensorboard"])
def test_a_missing_tracker_package_is_refused_with_the_fix(kind, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kind else real(name, *a))
    with pytest.raises(ConfigError, match=f"pip install {kind}, or use --report_to none"):
        tracking.check_available(kind)
    tracking.check_available("none")

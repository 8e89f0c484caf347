"""The prompt and its reparameterization as one validated value (ground floor: imports errors and res_mlp only).

    ResidualPromptConfig(num_virtual_tokens=10, reparameterization="MLP1")   # Residual Prompt Tuning (paper, Sec. 3)
    ResidualPromptConfig(num_virtual_tokens=10, reparameterization=None)     # plain prompt tuning (Lester et al.)

Every field is checked when the config is built; a bad value raises ConfigError naming the field and the fix.
``train.py`` builds the same object from its flags (``from_cli``), so the library and the CLI build one prompt the
same way. The config is saved as JSON beside a trained prompt (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError
from .res_mlp import NETWORKS, NONLINEARITIES

INITS = ("vocab", "vocab_top5000", "uniform", "class_labels", "file")
# The CLI's flag for each field: train.py --FLAG (the original's names) -> ResidualPromptConfig.FIELD.
CLI_NAMES = {"prefix_len": "num_virtual_tokens", "prefix_MLP": "reparameterization", "bottleneck_size": "bottleneck",
             "residual": "residual", "separate_mlps": "separate_networks", "nonlinearity": "nonlinearity",
             "mlp_layer_norm": "layer_norm", "mlp_dropout": "dropout", "mlp2_shared_weights": "mlp2_shared_weights",
             "prompt_init": "init", "prefix_path": "init_path", "seed": "seed"}


@dataclass(frozen=True)
class ResidualPromptConfig:
    """num_virtual_tokens: P, the prompt's length (train.py --prefix_len).
    reparameterization: the network phi the prompt goes through: "MLP1" (the paper's residual MLP), "MLP2", "LSTM"
        (P-tuning's: LSTM2 + MLP head), "LSTM1", "LSTM2", "transformer", or None (plain prompt tuning).
    bottleneck: M, the MLPs' hidden width. residual: the skip connection phi(x) = net(x) + x.
    separate_networks: one network per prompt token. nonlinearity: relu | tanh | sigm (MLPs).
    layer_norm: the MLPs' final LayerNorm. dropout: MLP dropout before that LayerNorm.
    mlp2_shared_weights: MLP2 uses one block's weights twice (as the original did).
    init: how the prompt starts: "vocab" (rows of the embedding table at random ids, the original's),
        "vocab_top5000", "uniform", "class_labels" (needs label words), "file" (init_path: a .npy [P, H]).
    seed: seeds the prompt's initial rows (the network's weights use torch's global RNG, as in train.py)."""
    num_virtual_tokens: int = 10
    reparameterization: str | None = "MLP1"
    bottleneck: int = 800
    residual: bool = True
    separate_networks: bool = False
    nonlinearity: str = "relu"
    layer_norm: bool = True
    dropout: float = 0.0
    mlp2_shared_weights: bool = False
    init: str = "vocab"
    init_path: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.reparameterization in ("None", "none", ""):
            object.__setattr__(self, "reparameterization", None)
        for name in ("residual", "separate_networks", "layer_norm", "mlp2_shared_weights"):
            value = getattr(self, name)
            if value not in (0, 1) or isinstance(value, float):  # bool, or the CLI's 0/1
                _bad(name, value, "True or False")
            object.__setattr__(self, name, bool(value))
        _int(self, "num_virtual_tokens", 1)
        _int(self, "bottleneck", 1)
        _int(self, "seed", 0)
        if self.reparameterization is not None and self.reparameterization not in NETWORKS:
            _bad("reparameterization", self.reparameterization, f"one of {', '.join(NETWORKS)} or None")
        if self.nonlinearity not in NONLINEARITIES:
            _bad("nonlinearity", self.nonlinearity, f"one of {', '.join(NONLINEARITIES)}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            _bad("dropout", self.dropout, "a number in [0, 1)")
        if self.init not in INITS:
            _bad("init", self.init, f"one of {', '.join(INITS)}")
        if (self.init == "file") != bool(self.init_path):
            raise ConfigError("ResidualPromptConfig: init='file' and init_path go together (init_path: a .npy "
                              f"[num_virtual_tokens, H] array); got init={self.init!r}, init_path={self.init_path!r}")
        if self.reparameterization != "MLP2" and self.mlp2_shared_weights:
            raise ConfigError("ResidualPromptConfig.mlp2_shared_weights is for reparameterization='MLP2'")

    @property
    def is_residual_pt(self) -> bool:
        """The paper's method: a residual MLP1."""
        return self.reparameterization == "MLP1" and self.residual

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ResidualPromptConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a ResidualPromptConfig is a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown ResidualPromptConfig field(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**d)

    @classmethod
    def from_cli(cls, args) -> "ResidualPromptConfig":
        """From train.py's resolved arguments (an argparse Namespace or args.json's dict)."""
        d = args if isinstance(args, dict) else vars(args)
        values = {field: d[flag] for flag, field in CLI_NAMES.items() if flag in d}
        values["init_path"] = values.get("init_path") or None
        values["init"] = values.get("init") or "vocab"
        return cls(**values)


def _bad(name, value, expected):
    raise ConfigError(f"ResidualPromptConfig.{name} must be {expected}, got {value!r}")


def _int(config, name, minimum):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _bad(name, value, f"an integer >= {minimum}")

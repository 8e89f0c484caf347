"""Reparameterization networks for soft prompts (Residual Prompt Tuning, Razdaibiedina et al. 2023, Sec. 3).

A soft prompt ``x: [P, H]`` is passed through a network ``phi`` before it is prepended to the encoder input.
The paper's residual reparameterization (``MLP1``) is

    phi(x) = LayerNorm(W2 · relu(W1 · x + b1) + b2) + x          W1: H -> M, W2: M -> H

with the skip connection added *after* the LayerNorm and optional dropout between the second Linear and the
LayerNorm. After training ``phi`` is discarded: ``phi(prompt)`` in eval mode is all inference needs.

Every network here maps ``[P, H] -> [P, H]`` on any device. Names are dispatched in one place,
:func:`build_reparam`; parameter names follow the original implementation (``module.0.weight`` ...,
``lstm_head.*``, ``module.layers.*``; with separate networks ``<i>.module.0.weight``) so that its recorded
states load without renaming.

Notation: P prompt length, H model width, M bottleneck width.
"""
from __future__ import annotations

import torch
from torch import nn

from .names import REPARAM_NAMES, USES_MLP_OPTIONS  # noqa: F401  (re-exported)

NONLINEARITIES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigm": nn.Sigmoid}

# Dropout inside the LSTM and transformer variants is fixed at 0.05, as in the original.
RECURRENT_DROPOUT = 0.05


class ResMLP(nn.Module):
    """One reparameterization network ``[P', H] -> [P', H]`` (P' = P, or 1 for a per-token network).

    kind:
      MLP1         Linear(H, M) -> act -> Linear(M, H) [-> Dropout] [-> LayerNorm]           (paper, Sec. 3)
      MLP2         the MLP1 block applied twice. ``mlp2_shared_weights=True`` reuses one block's weights,
                   as the original did by repeating the same layer objects; the default gives the second
                   block its own weights.
      LSTM1/LSTM2  bidirectional LSTM with H/2 units per direction, 1 or 2 layers, the prompt read as one
                   sequence of P tokens.
      LSTM         LSTM2 followed by Linear(H, H) -> ReLU -> Linear(H, H) (the P-tuning head).
      transformer  2-layer post-norm TransformerEncoder, 2 heads, feed-forward 2048 (torch's default).
    residual: add the input after the network (after the LayerNorm for MLPs).
    """

    def __init__(self, kind: str, hidden: int, bottleneck: int = 800, nonlinearity: str = "relu",
                 layer_norm: bool = True, dropout: float = 0.0, residual: bool = True,
                 mlp2_shared_weights: bool = False):
        super().__init__()
        if kind not in NETWORKS:
            raise ValueError(f"unknown reparameterization {kind!r}; valid: {', '.join(REPARAM_NAMES)}")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; valid: {', '.join(NONLINEARITIES)}")
        self.kind = kind
        self.residual = residual
        NETWORKS[kind](self, hidden, bottleneck, nonlinearity, layer_norm, dropout, mlp2_shared_weights)

    # ---- builders, one per kind; each sets the attributes its forward uses ----
    def _build_mlp(self, hidden, bottleneck, nonlinearity, layer_norm, dropout, mlp2_shared_weights):
        def block():
            layers = [nn.Linear(hidden, bottleneck), NONLINEARITIES[nonlinearity](), nn.Linear(bottleneck, hidden)]
            if dropout > 0:  # as the original: the Dropout exists only when p > 0 (it shifts module indices)
                layers.append(nn.Dropout(dropout))
            if layer_norm:
                layers.append(nn.LayerNorm(hidden))
            return layers

        layers = block()
        if self.kind == "MLP2":
            # differs from original: it always repeated the same objects (one weight set used twice);
            # that behaviour is kept behind mlp2_shared_weights (--mlp2_shared_weights 1).
            layers = layers + (layers if mlp2_shared_weights else block())
        self.module = nn.Sequential(*layers)

    def _build_lstm(self, hidden, bottleneck, nonlinearity, layer_norm, dropout, mlp2_shared_weights):
        num_layers = 1 if self.kind == "LSTM1" else 2
        # Inter-layer dropout only exists with 2 layers; passing it for 1 layer only makes torch warn.
        self.lstm_head = nn.LSTM(input_size=hidden, hidden_size=hidden // 2, num_layers=num_layers,
                                 dropout=RECURRENT_DROPOUT if num_layers > 1 else 0.0,
                                 bidirectional=True, batch_first=True)
        if self.kind == "LSTM":
            # differs from original: its LSTM branch fell through to a missing attribute and crashed;
            # here it is LSTM -> MLP head, as in P-tuning (Liu et al., 2021).
            self.mlp_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def _build_transformer(self, hidden, bottleneck, nonlinearity, layer_norm, dropout, mlp2_shared_weights):
        # differs from original: it moved this network to CUDA unconditionally; here it follows the prompt.
        layer = nn.TransformerEncoderLayer(d_model=hidden, nhead=2, dropout=RECURRENT_DROPOUT)
        self.module = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [P', H] -> [P', H]
        if self.kind.startswith("LSTM"):
            out = self.lstm_head(x.unsqueeze(0))[0].squeeze(0)  # [1, P', H] -> [P', H]
            if self.kind == "LSTM":
                out = self.mlp_head(out)
        else:
            out = self.module(x)  # transformer: an unbatched sequence of P' tokens
        return out + x if self.residual else out


NETWORKS = {
    "MLP1": ResMLP._build_mlp,
    "MLP2": ResMLP._build_mlp,
    "LSTM": ResMLP._build_lstm,
    "LSTM1": ResMLP._build_lstm,
    "LSTM2": ResMLP._build_lstm,
    "transformer": ResMLP._build_transformer,
}


class SeparateReparam(nn.ModuleList):
    """One network per prompt token (``--separate_mlps 1``): row i of the prompt goes through network i."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [P, H]
        return torch.cat([net(x[i:i + 1]) for i, net in enumerate(self)], dim=0)  # P x [1, H] -> [P, H]


def build_reparam(name: str, hidden: int, prompt_len: int, bottleneck: int = 800, nonlinearity: str = "relu",
                  layer_norm: bool = True, dropout: float = 0.0, residual: bool = True, separate: bool = False,
                  mlp2_shared_weights: bool = False) -> nn.Module | None:
    """The reparameterization called ``name`` (one of REPARAM_NAMES), or None for plain prompt tuning."""
    if name not in REPARAM_NAMES:
        raise ValueError(f"unknown reparameterization {name!r}; valid: {', '.join(REPARAM_NAMES)}")
    if name == "None":
        return None
    if name == "transformer" and hidden % 2:
        raise ValueError(f"the transformer reparameterization needs an even model width (2 heads), got H={hidden}")

    def make():
        return ResMLP(name, hidden, bottleneck, nonlinearity, layer_norm, dropout, residual, mlp2_shared_weights)

    return SeparateReparam([make() for _ in range(prompt_len)]) if separate else make()

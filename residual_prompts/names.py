"""The names the command line offers and the library accepts, without importing torch: arguments.py builds train.py's
parser from them, so that `train.py` refuses bad input before loading torch and transformers (~2-3 s) and
`scripts/sweep.py status` / `list` run without them. The modules that act on a name map it to what it does
(res_mlp.NETWORKS, prompts.INITIALIZERS, base.PRECISIONS, train_utils.OPTIMIZERS); tests/test_layout.py checks
that each map's keys are these names, in this order."""
from __future__ import annotations

import json
import os

# The prompt's reparameterizations (res_mlp.NETWORKS); "None" = plain prompt tuning (Lester et al., 2021).
NETWORK_NAMES = ("MLP1", "MLP2", "LSTM", "LSTM1", "LSTM2", "transformer")
REPARAM_NAMES = ("None",) + NETWORK_NAMES
# Which networks read the MLP options; the CLI refuses an option given for a kind that would ignore it.
USES_MLP_OPTIONS = ("MLP1", "MLP2")
INITIALIZER_NAMES = ("vocab", "vocab_top5000", "uniform", "class_labels", "file")  # prompts.INITIALIZERS
POOLINGS = ("cls", "mean")  # what an encoder's head reads; --pooling auto resolves to one (default_pooling)
PRECISION_NAMES = ("fp32", "bf16", "fp16")  # base.PRECISIONS
OPTIMIZER_NAMES = ("legacy_adamw", "torch_adamw")  # train_utils.OPTIMIZERS


def looks_like_path(name: str) -> bool:
    """A model name that can only be a folder: it starts with '.' or '/', holds the system's own separator
    where that is not '/', or more than one '/' (a Hub id is NAME or OWNER/NAME)."""
    return name.startswith((".", "/")) or (os.sep != "/" and os.sep in name) or name.count("/") > 1


def default_pooling(name) -> str:
    """--pooling auto: "mean" when ``name`` is a local sentence-transformers folder whose pooling config says
    mean pooling (1_Pooling/config.json), else "cls" (BERT's classification convention)."""
    path = os.path.join(name, "1_Pooling", "config.json")
    try:
        with open(path) as f:
            return "mean" if json.load(f).get("pooling_mode_mean_tokens") else "cls"
    except (OSError, ValueError, AttributeError):
        return "cls"

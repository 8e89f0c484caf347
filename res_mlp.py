"""The reparameterization networks (MLP1, MLP2, LSTM, LSTM1, LSTM2, transformer): see residual_prompts/res_mlp.py,
where they live so that ``pip install`` ships them inside the library package. This module is that module under the
name the original code and this project's scripts use (``import res_mlp`` gives the same module object)."""
import sys

from residual_prompts import res_mlp as _res_mlp

sys.modules[__name__] = _res_mlp

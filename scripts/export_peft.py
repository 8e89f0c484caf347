"""Export a run's projected prompt as a Hugging Face PEFT prompt-tuning adapter.

    python scripts/export_peft.py runs/cb_residual_pt adapters/cb_residual_pt
    python scripts/export_peft.py runs/cb_residual_pt adapters/cb_residual_pt --base_model /models/t5-base

Then, anywhere with peft installed:

    from peft import PeftModel
    from transformers import T5ForConditionalGeneration
    model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained("t5-base"), "adapters/cb_residual_pt")

The adapter holds the best projected prompt phi(x) [P, H] (checkpoint.pt's ``projected_prompt``, else prompt.npy) as
PEFT's ``prompt_embeddings`` (PromptTuningConfig, task_type SEQ_2_SEQ_LM, num_virtual_tokens P, token_dim H,
num_transformer_submodules 1: the prompt goes before the encoder input only, as in train.py). It is written by
PEFT itself (get_peft_model + save_pretrained), then read back and compared bit for bit. The reparameterization
is not needed: inference uses phi(x) only.

Same numbers as train.py's evaluation (tests/test_export_peft.py checks predictions and loss), provided the input
is what train.py fed the model: the task's text (data_utils.format_example) tokenized with exactly one </s>
(data_utils.encode_batch), cut to seq_len - P tokens. train.py cuts [prompt; source] to --seq_len, so a source
longer than seq_len - P loses its last tokens; PEFT cuts nothing. Greedy decoding of target_len - 1 new tokens.

The base model: --base_model, else the run's model/ folder when the run also trained model weights
(--freeze_except; --freeze_weights 0), else args.json's model_name. It becomes the adapter's
base_model_name_or_path. Refused: a full fine-tuning run (no prompt), an unfinished run, a non-empty OUT_DIR.
Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

EXIT_BAD_INPUT = 2


class ExportError(ValueError):
    """A user-facing problem; str(e) is one line naming it and the fix."""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (save_dir/save_name of train.py)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="adapter folder to create (must not exist or be empty)")
    p.add_argument("--base_model", default=None,
                   help="Hub name or local T5 folder to load and record as the adapter's base model (default: the "
                        "run's model/ if it trained model weights, else args.json model_name)")
    return p


def read_run(run_dir):
    """-> (args, projected prompt [P, H] float32 tensor). Refuses what has no prompt or is unfinished."""
    paths = {f: os.path.join(run_dir, f) for f in ("args.json", "results.json", "checkpoint.pt", "prompt.npy")}
    if not (os.path.isfile(paths["args.json"]) and os.path.isfile(paths["results.json"])):
        raise ExportError(f"{run_dir} is not a run folder (no args.json and results.json); give save_dir/save_name "
                          f"of a train.py run")
    with open(paths["args.json"]) as f:
        args = json.load(f)
    with open(paths["results.json"]) as f:
        results = json.load(f)
    if int(args.get("prefix_len", 0)) == 0:
        model_dir = os.path.join(run_dir, "model")
        raise ExportError(f"{run_dir} is a full fine-tuning run (--prefix_len 0): it has no prompt to export; its "
                          f"trained model is {model_dir} (T5ForConditionalGeneration.from_pretrained)")
    if results.get("complete") is not True:
        raise ExportError(f"{run_dir} is not finished (results.json complete is not true): run its train.py command "
                          f"again to complete it, then export")
    import numpy as np
    import torch

    prompt = None
    if os.path.isfile(paths["checkpoint.pt"]):
        prompt = torch.load(paths["checkpoint.pt"], map_location="cpu", weights_only=True)["projected_prompt"]
    if os.path.isfile(paths["prompt.npy"]):
        npy = torch.from_numpy(np.load(paths["prompt.npy"], allow_pickle=False))
        if prompt is not None and not torch.equal(prompt.float(), npy.float()):
            raise ExportError(f"{run_dir}: checkpoint.pt's projected_prompt and prompt.npy differ; the folder mixes "
                              f"two runs: retrain it")
        prompt = npy if prompt is None else prompt
    if prompt is None:
        raise ExportError(f"{run_dir} has neither checkpoint.pt nor prompt.npy: nothing to export")
    prompt = prompt.float().contiguous()
    if prompt.ndim != 2 or prompt.shape[0] != int(args["prefix_len"]):
        raise ExportError(f"{run_dir}: the prompt has shape {list(prompt.shape)}, expected [prefix_len, H] with "
                          f"prefix_len {args['prefix_len']}")
    return args, prompt


def check_out_dir(out_dir):
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"OUT_DIR {out_dir} is a file; give a new folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ExportError(f"OUT_DIR {out_dir} is not empty; give a new or empty folder (nothing is overwritten)")


def load_base(name):
    from transformers import T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return T5ForConditionalGeneration.from_pretrained(name)
    except Exception as e:  # any failure here is a problem with the model named
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"cannot load the base model {name!r} ({first[:200]}); pass --base_model with a local T5 "
                          f"folder or a reachable Hub name") from None


def export(run_dir, out_dir, base_model=None):
    """Write the adapter; returns (its PromptTuningConfig, the base model name recorded)."""
    check_out_dir(out_dir)  # the refusals come before the slow imports
    args, prompt = read_run(run_dir)  # [P, H]
    import torch
    from peft import PeftConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from safetensors.torch import load_file

    if base_model is None:
        trained = os.path.join(run_dir, "model")
        base_model = trained if os.path.isdir(trained) else args["model_name"]
    model = load_base(base_model)
    n_tokens, width = prompt.shape
    if width != model.config.d_model:
        raise ExportError(f"the prompt is {width} wide but the base model {base_model!r} has d_model "
                          f"{model.config.d_model}; pass --base_model the model the run was trained on")
    config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=n_tokens, token_dim=width,
                                num_transformer_submodules=1,  # encoder input only, as train.py
                                prompt_tuning_init=PromptTuningInit.RANDOM)  # overwritten just below
    with warnings.catch_warnings():  # peft 0.21 reads a transformers 5 attribute that warns about its deprecation
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt)  # [P, H]

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
    try:  # written beside OUT_DIR, checked, then renamed: OUT_DIR never holds a partial adapter
        peft_model.save_pretrained(tmp)
        saved = load_file(os.path.join(tmp, "adapter_model.safetensors"))
        if set(saved) != {"prompt_embeddings"} or not torch.equal(saved["prompt_embeddings"], prompt):
            raise RuntimeError(f"PEFT wrote {sorted(saved)} that do not hold the run's prompt")
        loaded = PeftConfig.from_pretrained(tmp)
        if (loaded.num_virtual_tokens, loaded.token_dim, loaded.num_transformer_submodules) != (n_tokens, width, 1):
            raise RuntimeError(f"PEFT wrote a config for {loaded.num_virtual_tokens} x {loaded.token_dim} tokens")
        _append_usage(os.path.join(tmp, "README.md"), run_dir, args, n_tokens, width, base_model)
        umask = os.umask(0)
        os.umask(umask)
        for name in os.listdir(tmp):  # mkdtemp makes 0700 (and safetensors 0600): give the modes mkdir/open give
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return loaded, base_model


def _append_usage(readme, run_dir, args, n_tokens, width, base_model):
    import data_utils

    task = data_utils.get_task(args["task"])
    keep = int(args["seq_len"]) - n_tokens
    text = f"""
## Residual Prompt Tuning export

Exported by `scripts/export_peft.py` from the run `{os.path.abspath(run_dir)}` (task `{task.name}`,
`--prefix_MLP {args.get("prefix_MLP")}`, `--residual {args.get("residual")}`, seed {args.get("seed")}): the best
projected prompt, {n_tokens} x {width}, prepended to the encoder input of `{base_model}`.

To reproduce the run's numbers: input text as `data_utils.format_example` writes it for `{task.name}`, tokenized
with exactly one `</s>` (`data_utils.encode_batch`), cut to seq_len - P = {args["seq_len"]} - {n_tokens} = {keep}
tokens (training cut [prompt; input] to {args["seq_len"]}); greedy decoding of {task.target_len - 1} new tokens.
"""
    with open(readme, "a") as f:
        f.write(text)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        config, base = export(args.run_dir, args.out_dir, args.base_model)
    except ExportError as e:
        print(f"export_peft.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.out_dir}: prompt tuning adapter, {config.num_virtual_tokens} virtual tokens x "
          f"{config.token_dim}, base model {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

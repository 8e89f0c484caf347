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
base_model_name_or_path: a local folder as an absolute path (a relative model_name of args.json is looked up from
the current folder, then from the project root, where train.py and the sweeps run), so that the adapter loads from
any folder (AutoPeftModelForSeq2SeqLM.from_pretrained(OUT_DIR)); a Hub name stays a name.

OUT_DIR/README.md is a model card written here (replacing PEFT's template): task, method, prompt length, the
run's validation and test-subset scores (results.json), the train.py command that made it (from args.json), and
how to load and feed the adapter. Refused: a full fine-tuning run (no prompt), a BERT-style encoder run (its
prompt feeds an encoder and a classification head, which PEFT's prompt tuning adapters do not hold), an unfinished
run, a non-empty OUT_DIR. Exit codes: 0 done, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from peft_adapter import AdapterError, ExportError, export, model_card, resolve_base  # noqa: E402,F401
from residual_prompts.errors import EXIT_BAD_INPUT  # noqa: E402



def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (save_dir/save_name of train.py)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="adapter folder to create (must not exist or be empty)")
    p.add_argument("--base_model", default=None,
                   help="Hub name or local T5 folder to load and record as the adapter's base model (default: the "
                        "run's model/ if it trained model weights, else args.json model_name)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        config, base = export(args.run_dir, args.out_dir, args.base_model)
    except AdapterError as e:
        print(f"export_peft.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.out_dir}: prompt tuning adapter, {config.num_virtual_tokens} virtual tokens x "
          f"{config.token_dim}, base model {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

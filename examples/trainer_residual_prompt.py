"""Train a residual prompt with transformers.Trainer through the library API (no train.py involved).

    python examples/trainer_residual_prompt.py --model_name t5-base --task cb --max_steps 100 --output_dir out/cb
    python examples/trainer_residual_prompt.py --model_name DIR --data_dir ../shared/data --task cb --max_steps 3 \
        --output_dir out/cb          # offline: a local model folder and the official data files

The three lines that matter (config, wrap, train) are marked below; everything else is data plumbing that a user
with their own dataset replaces. OUTPUT_DIR receives a PEFT prompt-tuning adapter of the projected prompt
(``PeftModel.from_pretrained(base_model, OUTPUT_DIR)``) and the exact prompt + network
(``residual_prompts.load_residual_prompt(base_model, OUTPUT_DIR)``). For T5 the adapter gives the same numbers as the
wrapper; for BERT-style encoders PEFT places the prompt before [CLS] and has no head (docs/API.md).

The optimizer is the one train.py uses (``--optimizer torch_adamw``): AdamW over ``model.param_groups(lr)``, weight
decay 1e-5 on every group, constant learning rate, no gradient clipping, so the same batches give the same losses
as train.py (tests/test_api.py).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone, uninstalled


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name", required=True, help="Hub name or local folder of a T5 or BERT-style model")
    p.add_argument("--task", default="cb", help="a GLUE / SuperGLUE task of this project (data_utils.TASKS)")
    p.add_argument("--data_dir", default=None, help="folder with glue/ and super_glue/ official files (else the Hub)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=0.3)
    p.add_argument("--num_virtual_tokens", type=int, default=10)
    p.add_argument("--reparameterization", default="MLP1", help="MLP1 (Residual PT), MLP2, LSTM, ..., or None")
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def features(wrapper, task, rows, tokenizer, seq_len):
    """Rows -> Trainer features: {"input_ids", "labels"} (T5: the target's token ids; encoders: the class id or
    score), tokenized by the wrapper's own rule (the one train.py uses)."""
    split = wrapper.encode_split(task, rows, tokenizer, seq_len)
    if wrapper.FAMILY == "t5":
        return [{"input_ids": s, "labels": t} for s, t in zip(split.source_ids, split.target_ids)]
    return [{"input_ids": s, "labels": t[0]} for s, t in zip(split.source_ids, split.target_ids)]


def main(argv=None):
    a = parse(argv)
    import torch
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments

    import data_utils
    from residual_prompts import ResidualPromptConfig, get_residual_prompt_model, load_model

    torch.manual_seed(a.seed)
    task = data_utils.get_task(a.task)
    model, tokenizer = load_model(a.model_name)
    model.requires_grad_(False)  # prompt tuning: the model stays frozen

    # 1. config  2. wrap
    config = ResidualPromptConfig(num_virtual_tokens=a.num_virtual_tokens, reparameterization=a.reparameterization,
                                  seed=a.seed)
    rp = get_residual_prompt_model(model, config, tokenizer, label_words=task.label_words, seq_len=a.seq_len)
    rp.print_trainable_parameters()

    rows = data_utils.build_splits(task, a.data_dir)["train"]
    collator = (DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100) if rp.FAMILY == "t5"
                else DataCollatorWithPadding(tokenizer))
    optimizer = torch.optim.AdamW(rp.param_groups(a.learning_rate), lr=a.learning_rate, eps=1e-8, weight_decay=1e-5)
    args = TrainingArguments(output_dir=a.output_dir, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
                             learning_rate=a.learning_rate, lr_scheduler_type="constant", max_grad_norm=0.0,
                             logging_steps=10, save_strategy="no", report_to="none", seed=a.seed,
                             remove_unused_columns=False, disable_tqdm=True, use_cpu=not torch.cuda.is_available())
    # 3. train
    trainer = Trainer(model=rp, args=args, train_dataset=features(rp, task, rows, tokenizer, a.seq_len),
                      data_collator=collator, optimizers=(optimizer, None))
    losses = []  # each step's loss, unrounded (Trainer's logs round to 4 decimals)
    rp.register_forward_hook(lambda module, inputs, out: losses.append(float(out.loss)) if module.training else None)
    result = trainer.train()
    print(f"final training loss: {losses[-1]:.6f} (mean over {len(losses)} steps: {result.training_loss:.6f})")
    rp.save_pretrained(a.output_dir)
    print(f"adapter: {a.output_dir} (peft.PeftModel.from_pretrained(base_model, {a.output_dir!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())

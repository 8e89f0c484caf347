"""The fast path computes what the original-behaviour path computes: same losses, same predictions, same scores.

Speed itself is measured by scripts/benchmark.py (docs/PERFORMANCE.md), never asserted here.
"""
import json

import numpy as np
import pytest
import torch

import data_utils
import train
from residual_prompts import models
import train_utils as tu
from residual_prompts.prompts import SoftPrompt
from conftest import run_py
from res_mlp import build_reparam


def run_cli(args):
    return run_py(["train.py", *args])


def cli_config(tiny_t5_dir, dtype=torch.float32):
    """The CLI's default Residual PT configuration (MLP1, bottleneck 800, vocab init, legacy AdamW at lr 0.3) on the
    tiny T5, built through train.py's own parser. The frozen model's dropout is off (--model_dropout 0): with it
    on, the attention-dropout masks have the padded length's shape, so no two paddings can draw the same masks."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    args = train.build_parser().parse_args(["--task", "cb", "--prefix_MLP", "MLP1", "--model_dropout", "0", "--save_name", "x"])
    args = train.check_args(args)
    tu.seed_everything(args.seed)  # as train.py: the prompt and MLP initializations draw from the seeded RNGs
    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    models.freeze_model(model, True, args.freeze_except)
    wrapper, _ = models.build_model(model, AutoTokenizer.from_pretrained(tiny_t5_dir), args,
                                    data_utils.get_task(args.task))
    wrapper.to(dtype)
    wrapper.train()
    model.eval()
    return wrapper, tu.build_optimizer(args.optimizer, wrapper, args.lr, args.mlp_lr, args.weight_decay)


def original_step_inputs(wrapper, batch, task):
    """What the original did before each step: training-set generate on the 512-padded batch."""
    with torch.no_grad():
        wrapper.generate(batch["source_ids"], task.target_len, wrapper.projected_prompt())


def batches(split, task, pad_to):
    return [{k: v for k, v in b.items() if k != "rows"} for b in tu.make_batches(split, 8, task.target_len, pad_to)]


def test_fast_path_losses_equal_the_original_behaviour_over_20_steps(tiny_t5_dir, t5_tokenizer, data_dir):
    """Lock-step, fp32: at each of 20 steps, from the same state, the loss of the dynamically padded batch equals
    the loss of the same batch padded to 512 after the original's training generate, within 1e-5."""
    task, split = cb(t5_tokenizer, data_dir, 160)
    wrapper, optimizer = cli_config(tiny_t5_dir)
    fast, slow = batches(split, task, None), batches(split, task, 512)
    assert len(fast) == 20 and all(f["source_ids"].shape[1] < 512 == s["source_ids"].shape[1]
                                   for f, s in zip(fast, slow))
    fast_losses, slow_losses = [], []
    for f, s in zip(fast, slow):
        original_step_inputs(wrapper, s, task)
        with torch.no_grad():
            slow_losses.append(wrapper.loss(s, wrapper.projected_prompt()).item())
        fast_losses.append(tu.train_step(wrapper, optimizer, f).item())
    np.testing.assert_allclose(fast_losses, slow_losses, rtol=1e-5, atol=0)
    assert np.ptp(fast_losses) > 1.0  # the prompt does move: 20 different states, not one loss repeated


def test_fast_and_original_runs_follow_the_same_trajectory_in_float64(tiny_t5_dir, t5_tokenizer, data_dir):
    """Two independent 20-step runs, fast vs original behaviour. In float64, so that Adam at lr 0.3 (which turns
    1e-7 float-order noise in a near-zero gradient into a full-size step, see docs/PERFORMANCE.md) cannot amplify
    rounding into a different trajectory: what remains is the math, and it is the same."""
    task, split = cb(t5_tokenizer, data_dir, 160)
    runs = []
    for pad_to in (None, 512):
        wrapper, optimizer = cli_config(tiny_t5_dir, torch.float64)
        losses = []
        for b in batches(split, task, pad_to):
            if pad_to:
                original_step_inputs(wrapper, b, task)
            losses.append(tu.train_step(wrapper, optimizer, b).item())
        runs.append((losses, wrapper.projected_prompt().detach()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5, atol=0)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-6, atol=1e-8)


def test_fast_evaluation_scores_equal_the_original_behaviour(tiny_t5_dir, t5_tokenizer, data_dir):
    """Evaluation as the original (batch 8, padded to 512, split order) and ours (length-sorted batches of 32,
    dynamic padding): same predictions, same score, same loss (both report the mean over batches of 8)."""
    task = data_utils.get_task("cb")
    val = models.PromptT5.encode_split(task, data_utils.load_split(task, "validation", str(data_dir)), t5_tokenizer, 512)
    wrapper, _ = cli_config(tiny_t5_dir)
    with torch.no_grad():  # a prompt far from the vocabulary, so that predictions differ between rows
        wrapper.prompt.mul_(30)
    slow = tu.evaluate(wrapper, val, task, batch_size=8, pad_to=512, loss_batch_size=8)
    fast = tu.evaluate(wrapper, val, task, batch_size=32, loss_batch_size=8)
    assert fast["predictions"] == slow["predictions"] and fast["metric"] == slow["metric"]
    assert fast["loss"] == pytest.approx(slow["loss"], rel=1e-5)


def tiny_wrapper(precision="fp32", seed=0, tokenizer=None):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=32128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    models.freeze_model(model, True, "xxxxxxx")
    prompt = torch.randn(4, 16) * 0.5
    return models.PromptT5(model, tokenizer, SoftPrompt(prompt, build_reparam("MLP1", 16, 4, bottleneck=8)), 512,
                           precision)


def cb(tokenizer, data_dir, n):
    task = data_utils.get_task("cb")
    return task, models.PromptT5.encode_split(task, data_utils.load_split(task, "train", str(data_dir))[:n], tokenizer, 512)


def test_length_sorted_evaluation_returns_results_in_the_split_order(t5_tokenizer, data_dir):
    task, split = cb(t5_tokenizer, data_dir, 24)
    wrapper = tiny_wrapper(tokenizer=t5_tokenizer)
    with torch.no_grad():  # make predictions differ between rows: a trained-looking prompt
        wrapper.prompt.mul_(20)
    sorted_batches = tu.evaluate(wrapper, split, task, batch_size=16, loss_batch_size=8)
    one_by_one = tu.evaluate(wrapper, split, task, batch_size=1, loss_batch_size=8)
    assert sorted_batches["predictions"] == one_by_one["predictions"]
    assert sorted_batches["loss"] == pytest.approx(one_by_one["loss"], rel=1e-5)
    # and the row order really was changed in the batched run: lengths are not already sorted
    lengths = [len(s) for s in split.source_ids]
    assert lengths != sorted(lengths, reverse=True)


def test_length_grouped_order_is_a_seeded_permutation_that_pads_less(t5_tokenizer, data_dir):
    task, split = cb(t5_tokenizer, data_dir, 200)
    order = tu.length_grouped_order(split, 8, seed=3, group_batches=5)
    assert sorted(order) == list(range(200)) and order != list(range(200))
    assert order == tu.length_grouped_order(split, 8, seed=3, group_batches=5)
    assert order != tu.length_grouped_order(split, 8, seed=4, group_batches=5)

    def padded_tokens(o):
        return sum(b["source_ids"].numel() for b in tu.make_batches(split, 8, task.target_len, order=o))

    assert padded_tokens(order) < 0.8 * padded_tokens(None)
    # rows stay inside their group of 5 batches (40 rows): grouping reorders locally, it does not shuffle the split
    assert all(set(order[g:g + 40]) == set(range(g, g + 40)) for g in range(0, 200, 40))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_keeps_prompt_and_mlp_in_fp32(t5_tokenizer, data_dir, precision):
    task, split = cb(t5_tokenizer, data_dir, 8)
    batch = next(tu.make_batches(split, 8, task.target_len))
    ref = tiny_wrapper("fp32")
    low = tiny_wrapper(precision)
    assert low.autocast() is not None and ref.autocast() is not None
    ref_loss = ref.loss(batch, ref.projected_prompt()).item()
    opt = tu.build_optimizer("legacy_adamw", low, lr=0.3)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    before = low.prompt.detach().clone()
    loss = tu.train_step(low, opt, batch, scaler=scaler)
    assert loss.dtype == torch.float32 and np.isfinite(loss.item())
    assert loss.item() == pytest.approx(ref_loss, rel=0.05)  # close to fp32, not equal
    assert loss.item() != ref_loss  # autocast really ran in reduced precision
    assert all(p.dtype == torch.float32 for p in low.parameters() if p.requires_grad)  # what trains: fp32
    assert {p.dtype for p in low.model.parameters()} == {models.PRECISIONS[precision]}  # the frozen model: stored low
    assert low.projected_prompt().dtype == torch.float32
    assert not torch.equal(low.prompt, before)  # the step happened (fp16: the scaler did not skip it)


@pytest.mark.slow
def test_precision_flag_runs_end_to_end(tiny_t5_dir, data_dir, tmp_path):
    proc = run_cli(["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir), "--num_epochs", "1",
                    "--select_k_per_class", "8", "--precision", "bf16", "--group_by_length", "1", "--progress", "0",
                    "--save_dir", str(tmp_path), "--save_name", "bf16"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "bf16" / "results.json").read_text())
    args = json.loads((tmp_path / "bf16" / "args.json").read_text())
    assert res["complete"] and np.isfinite(res["train"]["loss"][0])
    assert args["precision"] == "bf16" and args["group_by_length"] == 1


@pytest.mark.slow
def test_benchmark_script_prints_the_tables(data_dir, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_py(["scripts/benchmark.py", "--shape", "tiny", "--steps", "2", "--eval_rows", "8", "--tasks", "cb",
                   "--configs", "original,ours,ours_nodrop", "--data_dir", str(data_dir), "--eval_compare", "--compare_rows", "12",
                   "--repeats", "1", "--rate_seconds", "0.2", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = proc.stdout.index("| configuration | train ex/s")
    lines = [line for line in proc.stdout[head:].splitlines()[2:5]]
    assert [line.split("|")[1].strip() for line in lines] == ["original", "ours", "ours_nodrop"]
    original = [float(x) for x in lines[0].strip("| ").split("|")[1:]]
    assert original[3:5] == [1.0, 1.0]  # the baseline's ratios to itself
    assert "% of matmul rate" in proc.stdout and "top operators by self CPU time" in proc.stdout
    report = json.loads(out.read_text())
    assert report["matmul_flops_per_s"] > 0 and report["device"] == "cpu"
    # the rate is sampled at the start and before each of the 3 configurations; fractions use the highest sample
    samples = report["matmul_flops_per_s_samples"]
    assert len(samples) == 4 and report["matmul_flops_per_s"] == max(samples)
    assert report["tasks"][0]["matmul_flops_per_s"] == max(samples)
    assert "the highest of 4 measurements in this run" in proc.stdout
    for row in report["tasks"][0]["rows"].values():
        assert row["train_flops"] > 0 and row["eval_flops"] > 0 and 0 < row["train_util"] < 1.5
        assert row["train_util"] == pytest.approx(row["train_flops_per_s"] / max(samples))
    assert report["tasks"][0]["rows"]["original"]["train_flops"] > report["tasks"][0]["rows"]["ours"]["train_flops"]
    profile = report["tasks"][0]["profile"]  # ours (training, evaluation) and ours_nodrop (training)
    assert [k.split(" (")[0] for k in profile] == ["`ours` training", "`ours` evaluation", "`ours_nodrop` training"]
    assert not any(op["op"] == "aten::bernoulli_" for op in profile["`ours_nodrop` training (2 steps)"])
    cmp = report["eval_compare"]
    assert cmp["rows"] == 12 and cmp["same_predictions"] and cmp["loss_rel_diff"] < 1e-5
    assert cmp["flops"]["after"] < cmp["flops"]["before"]  # one encoder pass instead of two

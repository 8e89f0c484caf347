"""train.py end to end on a tiny T5 and real data: outputs, the original's commands, bad input."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from conftest import run_py
from res_mlp import build_reparam


def run_cli(args, env_extra=None):
    return run_py(["train.py", *args], env={"PYTHONWARNINGS": "ignore", **(env_extra or {})})


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def cb_run(tiny_t5_dir, data_dir, tmp_path_factory):
    """The Core issue's acceptance command, through the real CLI."""
    save_dir = tmp_path_factory.mktemp("runs")
    proc = run_cli(["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
                    "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--early_stopping", "1", "--get_test_subset", "1",
                    "--num_epochs", "2", "--save_dir", str(save_dir), "--save_name", "x", "--progress", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir / "x", proc


@pytest.mark.slow
def test_cb_run_writes_every_output(cb_run):
    run_dir, proc = cb_run
    assert {"args.json", "results.json", "score_dict.npy", "prompt.npy", "checkpoint.pt"} <= set(os.listdir(run_dir))
    args = json.loads((run_dir / "args.json").read_text())
    assert args["prompt_init"] == "vocab" and args["eval_every"] == 1 and args["eval_batch_size"] == 32
    res = json.loads((run_dir / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert res["complete"] is True and res["task"] == "cb" and res["device"] == "cpu"
    assert res["train"]["acc"] == [None, None]  # --train_eval_batches 0: not computed, written as null
    # CB validation (56 rows) is cut in half: 28 validation, 28 test
    assert res["n_examples"] == {"train": 250, "validation": 28, "test": 28}
    assert [e["epoch"] for e in res["validation"]] == [0, 1]
    for e in res["validation"] + [res["test"]]:
        assert len(e["metric"]) == 2 and e["score"] == pytest.approx(np.mean(e["metric"]))
        assert np.isfinite(e["loss"]) and set(e["official"]) >= {"acc", "f1_macro"}
    assert len(res["train"]["loss"]) == 2 and len(res["train"]["step_losses"][0]) == 32  # ceil(250 / 8)
    best = max(res["validation"], key=lambda e: e["score"])  # first best wins ties
    assert res["best_epoch"] == best["epoch"] and res["best_val_score"] == best["score"]
    assert res["trainable_params"]["model"] == 0 and res["trainable_params"]["prompt"] == 10 * 32
    assert set(res["versions"]) >= {"torch", "transformers"} and res["wall_time_s"] > 0
    assert "done: cb" in proc.stdout and "epoch 2: epoch_loss" in proc.stdout  # epochs counted from 1
    assert oct((run_dir / "results.json").stat().st_mode & 0o777) == oct(0o666 & ~current_umask())

    score_dict = np.load(run_dir / "score_dict.npy", allow_pickle=True).item()
    assert set(score_dict) == {"val", "train"} and set(score_dict["val"]) == {"acc", "loss"}
    assert score_dict["val"]["loss"] == [e["loss"] for e in res["validation"]]
    assert len(score_dict["train"]["loss"]) == 2


@pytest.mark.slow
def test_prompt_npy_is_the_mlp_applied_to_the_checkpointed_raw_prompt(cb_run):
    run_dir, _ = cb_run
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    args = ckpt["args"]
    assert args["prefix_MLP"] == "MLP1" and ckpt["prompt"].shape == (10, 32)
    net = build_reparam(args["prefix_MLP"], 32, args["prefix_len"], args["bottleneck_size"], args["nonlinearity"],
                        bool(args["mlp_layer_norm"]), args["mlp_dropout"], bool(args["residual"]),
                        bool(args["separate_mlps"]))
    net.load_state_dict(ckpt["reparam"])
    net.eval()
    prompt = np.load(run_dir / "prompt.npy")
    assert prompt.shape == (10, 32) and prompt.dtype == np.float32
    np.testing.assert_allclose(prompt, net(ckpt["prompt"]).detach().numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(prompt, ckpt["prompt"].numpy())  # the projection is not the identity


@pytest.mark.slow
def test_existing_run_is_never_overwritten_without_flag(cb_run, tiny_t5_dir, data_dir):
    run_dir, _ = cb_run
    before = hashes(run_dir)
    argv = ["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir), "--freeze_weights", "1",
            "--num_epochs", "1", "--save_dir", str(run_dir.parent), "--save_name", "x", "--progress", "0"]
    proc = run_cli(argv)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "holds a run with other arguments" in proc.stderr
    assert "--prefix_MLP 'MLP1' (saved) != 'None' (now)" in proc.stderr and "--overwrite 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert hashes(run_dir) == before


@pytest.mark.slow
def test_original_readme_command_runs_verbatim(tiny_t5_dir, data_dir, tmp_path):
    """The original README's example, with only its paths made local (model dir; data through $RPT_DATA_DIR)."""
    cmd = (f"--task wsc --prefix_MLP MLP1 --lr 0.3 --freeze_weights 1 --freeze_except xxxx "
           f"--model_name {tiny_t5_dir} --early_stopping 1 --test_eval_after_every_task 1 --select_k_per_class -1 "
           f"--batch_size 8 --num_epochs 20 --prefix_len 10 --save_dir {tmp_path} --save_name NAME").split()
    proc = run_cli(cmd, env_extra={"RPT_DATA_DIR": str(data_dir), "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "NAME" / "results.json").read_text())
    assert res["n_examples"]["train"] == 259 and res["n_examples"]["validation"] == 38  # label-1 rows only
    assert len(res["validation"]) == 20 and res["final_eval"]["split"] == "validation"


def test_full_finetuning_saves_the_model(tiny_t5_dir, data_dir, tmp_path):
    code = train.main(["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
                       "--prefix_len", "0", "--freeze_weights", "0", "--lr", "3e-4", "--batch_size", "4",
                       "--num_epochs", "1", "--save_dir", str(tmp_path), "--save_name", "ft", "--progress", "0"])
    assert code == 0
    run_dir = tmp_path / "ft"
    assert (run_dir / "model" / "config.json").exists() and not (run_dir / "prompt.npy").exists()
    res = json.loads((run_dir / "results.json").read_text())
    assert res["trainable_params"]["model"] > 1_000_000 and res["trainable_params"]["prompt"] == 0
    from transformers import T5ForConditionalGeneration

    saved = T5ForConditionalGeneration.from_pretrained(run_dir / "model")
    original = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    assert not torch.equal(saved.shared.weight, original.shared.weight)


@pytest.mark.parametrize("reparam,extra", [("None", []), ("LSTM1", []), ("MLP2", ["--separate_mlps", "1"]),
                                           ("transformer", ["--prompt_init", "class_labels", "--model_dropout", "0"])])
def test_other_configurations_run(reparam, extra, tiny_t5_dir, data_dir, tmp_path):
    code = train.main(["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
                       "--prefix_MLP", reparam, "--freeze_weights", "1", "--num_epochs", "1", "--select_k_per_class",
                       "4", "--save_dir", str(tmp_path), "--save_name", "r", "--progress", "0", *extra])
    assert code == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["complete"] and np.isfinite(res["train"]["loss"][0])
    assert np.load(tmp_path / "r" / "prompt.npy").shape == (10, 32)


def test_flags_the_original_ignored_now_act(tiny_t5_dir, data_dir, tmp_path):
    """--limit_val_set, --test_eval_after_every_task (with a test subset), --train_eval_batches, --eval_every."""
    code = train.main(["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
                       "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--select_k_per_class", "4",
                       "--get_test_subset", "1", "--limit_val_set", "3", "--test_eval_after_every_task", "1",
                       "--train_eval_batches", "1", "--num_epochs", "3", "--eval_every", "2", "--nonlinearity",
                       "tanh", "--save_dir", str(tmp_path), "--save_name", "f", "--progress", "0"])
    assert code == 0
    res = json.loads((tmp_path / "f" / "results.json").read_text())
    # 4 per class for training; validation 277 -> 138 / 139 halves, then at most 3 per class for validation
    assert res["n_examples"] == {"train": 8, "validation": 6, "test": 139}
    assert [e["epoch"] for e in res["validation"]] == [0, 2]
    assert [e["epoch"] for e in res["test_history"]] == [0, 2]
    assert all(isinstance(a, float) for a in res["train"]["acc"])  # computed on the first batch of each epoch
    ckpt = torch.load(tmp_path / "f" / "checkpoint.pt", weights_only=True)
    assert ckpt["args"]["nonlinearity"] == "tanh"


def test_same_seed_same_prompt_other_seed_other_prompt(tiny_t5_dir, data_dir, tmp_path):
    def run(name, seed):
        assert train.main(["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
                           "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--select_k_per_class", "8",
                           "--limit_val_set", "4", "--num_epochs", "2", "--seed", str(seed), "--save_dir",
                           str(tmp_path), "--save_name", name, "--progress", "0"]) == 0
        res = json.loads((tmp_path / name / "results.json").read_text())
        return np.load(tmp_path / name / "prompt.npy"), res["train"]["step_losses"]

    (p1, l1), (p2, l2), (p3, l3) = run("a", 1), run("b", 1), run("c", 2)
    assert np.array_equal(p1, p2) and l1 == l2
    assert not np.allclose(p1, p3) and l1 != l3


def test_eval_every_follows_the_original_rule():
    parser = train.build_parser()
    for epochs, every in ((20, 1), (50, 1), (51, 5), (200, 5), (201, 25)):
        args = parser.parse_args(["--task", "cb", "--save_name", "x", "--num_epochs", str(epochs)])
        assert train.check_args(args).eval_every == every


def test_freeze_except_trains_and_saves_the_matching_weights(tiny_t5_dir, data_dir, tmp_path):
    """--freeze_except shared: the prompt and the embedding table train; the best state includes the table."""
    assert train.main(["--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name", str(tiny_t5_dir),
                       "--freeze_weights", "1", "--freeze_except", "shared", "--select_k_per_class", "4",
                       "--limit_val_set", "4", "--num_epochs", "2", "--early_stopping", "1", "--save_dir",
                       str(tmp_path), "--save_name", "e", "--progress", "0"]) == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["trainable_params"]["model"] == 32128 * 32
    from transformers import T5ForConditionalGeneration

    saved = T5ForConditionalGeneration.from_pretrained(tmp_path / "e" / "model")
    original = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    assert not torch.equal(saved.shared.weight, original.shared.weight)
    assert torch.equal(saved.encoder.block[0].layer[0].SelfAttention.q.weight,
                       original.encoder.block[0].layer[0].SelfAttention.q.weight)

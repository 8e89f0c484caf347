"""scripts/export_peft.py: a tiny T5 run through train.py, exported, loaded with PeftModel.from_pretrained, gives
train_utils.evaluate's predictions and loss on the run's validation rows; bad input is refused."""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
# peft 0.21 reads a transformers 5 attribute that warns about its own deprecation (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

import data_utils  # noqa: E402
from residual_prompts import models  # noqa: E402
import train_utils as tu  # noqa: E402
from residual_prompts.prompts import SoftPrompt  # noqa: E402
from conftest import run_py  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN, P = 48, 10  # short: most RTE sources are longer than SEQ_LEN - P, so the truncation rule is exercised


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_peft = load_script("export_peft")


def run_script(args):
    return run_py(args, env={"PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def run_dir(tiny_t5_dir, data_dir, tmp_path_factory):
    """Residual PT on 8 RTE rows, 8 validation rows, 2 epochs, through the real CLI."""
    save_dir = tmp_path_factory.mktemp("runs")
    proc = run_script(["train.py", "--task", "rte_superglue", "--data_dir", str(data_dir), "--model_name",
                       str(tiny_t5_dir), "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--early_stopping", "1",
                       "--select_k_per_class", "4", "--limit_val_set", "4", "--num_epochs", "2", "--batch_size", "4",
                       "--seq_len", str(SEQ_LEN), "--prefix_len", str(P), "--save_dir", str(save_dir),
                       "--save_name", "r", "--progress", "0", "--save_adapter", "auto"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir / "r"


@pytest.fixture(scope="module")
def adapter_dir(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "adapter"
    assert export_peft.main([str(run_dir), str(out)]) == 0
    return out


@pytest.mark.slow  # run_dir: a train.py run in a child process
def test_adapter_files_and_config(adapter_dir, run_dir, tiny_t5_dir):
    from safetensors.torch import load_file

    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter_dir))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "SEQ_2_SEQ_LM"
    assert (config["num_virtual_tokens"], config["token_dim"], config["num_transformer_submodules"]) == (P, 32, 1)
    assert config["base_model_name_or_path"] == str(tiny_t5_dir)  # args.json model_name
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    assert list(weights) == ["prompt_embeddings"]
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert torch.equal(weights["prompt_embeddings"], ckpt["projected_prompt"])  # bit for bit, [P, H]
    assert np.array_equal(weights["prompt_embeddings"].numpy(), np.load(run_dir / "prompt.npy"))
    assert not torch.equal(ckpt["projected_prompt"], ckpt["prompt"])  # the projected prompt, not the raw one
    assert "cut to seq_len - P = 48 - 10 = 38" in (adapter_dir / "README.md").read_text()
    assert not [p for p in adapter_dir.parent.iterdir() if p.name.startswith(".tmp-export-")]


def _pad(seqs, length=None):
    return tu._pad(seqs, length or max(map(len, seqs)))


@pytest.mark.slow
def test_peft_model_reproduces_our_evaluation(adapter_dir, run_dir, tiny_t5_dir, data_dir):
    from peft import PeftModel
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    args = json.loads((run_dir / "args.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    task = data_utils.get_task(args["task"])
    splits = data_utils.build_splits(task, str(data_dir), args["select_k_per_class"], bool(args["get_test_subset"]),
                                     args["limit_val_set"], args["data_seed"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_t5_dir)
    val = models.PromptT5.encode_split(task, splits["val"], tokenizer, args["seq_len"], splits["val_groups"],
                          splits["val_official_groups"])
    assert len(val) == results["n_examples"]["validation"] == 8

    # ours: train_utils.evaluate with the saved projected prompt reproduces the run's best evaluation
    prompt = torch.from_numpy(np.load(run_dir / "prompt.npy"))  # [P, H]
    ours = models.PromptT5(T5ForConditionalGeneration.from_pretrained(tiny_t5_dir), tokenizer, SoftPrompt(prompt),
                           seq_len=args["seq_len"])
    res = tu.evaluate(ours, val, task, batch_size=args["eval_batch_size"], loss_batch_size=args["batch_size"])
    best = next(e for e in results["validation"] if e["epoch"] == results["best_epoch"])
    assert res["score"] == results["best_val_score"] and res["loss"] == pytest.approx(best["loss"], rel=1e-6)

    # PEFT: the adapter on a freshly loaded base model, fed the sources cut to seq_len - P
    peft_model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(tiny_t5_dir), adapter_dir).eval()
    assert torch.equal(peft_model.get_prompt(batch_size=1)[0], prompt)
    keep = args["seq_len"] - P
    assert sum(len(s) > keep for s in val.source_ids) >= 4  # the cut matters for at least half the rows
    cut = [s[:keep] for s in val.source_ids]
    with torch.no_grad():
        ids = _pad(cut)
        out = peft_model.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=task.target_len - 1,
                                  do_sample=False, num_beams=1)
    decoded = tokenizer.batch_decode(out.tolist(), skip_special_tokens=False)

    def strip_pad(s):  # the decoder start and the padding after </s> depend on the batch, not on the model
        return s.replace("<pad>", "").strip()

    assert [strip_pad(d) for d in decoded] == [strip_pad(d) for d in res["predictions"]]
    # A random tiny T5 says the same words for every row, so compare what decides them too: the logits of every
    # decoding step, PEFT against our PromptT5's encoder inputs (the prompt prepended, cut to seq_len).
    def step_logits(**inputs):
        with torch.no_grad():
            out = inputs.pop("model").generate(**inputs, max_new_tokens=task.target_len - 1, do_sample=False,
                                               num_beams=1, output_logits=True, return_dict_in_generate=True)
        return torch.stack(out.logits, 1)  # [B, target_len - 1, V]

    embeds, mask = ours.encoder_inputs(_pad(val.source_ids), prompt)  # [B, T', H], T' <= seq_len
    reference = step_logits(model=ours.model, inputs_embeds=embeds, attention_mask=mask)
    torch.testing.assert_close(step_logits(model=peft_model, input_ids=ids, attention_mask=(ids != 0).long()),
                               reference, rtol=0, atol=1e-5)
    full = _pad(val.source_ids)
    uncut = step_logits(model=peft_model, input_ids=full, attention_mask=(full != 0).long())
    assert (uncut - reference).abs().max() > 1e-3
    targets = tokenizer.batch_decode(_pad(val.target_ids, task.target_len).tolist(), skip_special_tokens=False)
    assert data_utils.evaluate(task, decoded, targets)["score"] == res["score"]

    def peft_loss(sources):  # the original's validation loss: mean over batches of --batch_size rows
        losses = []
        for start in range(0, len(sources), args["batch_size"]):
            src = _pad(sources[start:start + args["batch_size"]])
            tgt = _pad(val.target_ids[start:start + args["batch_size"]], task.target_len)
            with torch.no_grad():
                out = peft_model(input_ids=src, attention_mask=(src != 0).long(),
                                 labels=tgt.masked_fill(tgt == 0, -100), decoder_attention_mask=(tgt != 0).long())
            losses.append(out.loss.item())
        return float(np.mean(losses))

    assert abs(peft_loss(cut) - res["loss"]) <= 1e-5
    # the same sources without the cut give another loss: the check sees the truncation rule
    assert abs(peft_loss(val.source_ids) - res["loss"]) > 1e-3


@pytest.mark.slow
def test_non_empty_out_dir_is_refused(run_dir, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_script(["scripts/export_peft.py", str(run_dir), str(out)])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("export_peft.py: error: OUT_DIR") and "not empty" in proc.stderr
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def _refused(argv, capsys):
    assert export_peft.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_full_finetuning_run_is_refused(tmp_path, capsys):
    run = tmp_path / "ft"
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"task": "cb", "prefix_len": 0, "freeze_weights": 0,
                                               "prefix_MLP": "None", "model_name": "t5-base"}))
    (run / "results.json").write_text(json.dumps({"task": "cb", "complete": True}))
    err = _refused([str(run), str(tmp_path / "out")], capsys)
    assert "full fine-tuning run (--prefix_len 0)" in err and "no prompt to export" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unfinished_mixed_and_foreign_folders_are_refused(run_dir, tmp_path, capsys):
    assert "is not a run folder" in _refused([str(tmp_path), str(tmp_path / "o1")], capsys)

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    results = json.loads((unfinished / "results.json").read_text())
    (unfinished / "results.json").write_text(json.dumps({**results, "complete": False}))
    assert "is not finished" in _refused([str(unfinished), str(tmp_path / "o2")], capsys)

    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir, mixed)
    np.save(mixed / "prompt.npy", np.load(mixed / "prompt.npy") + 1)
    assert "differ" in _refused([str(mixed), str(tmp_path / "o3")], capsys)
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


@pytest.mark.slow
def test_run_with_trained_weights_uses_its_model_folder(run_dir, tiny_t5_dir, tmp_path):
    """A run that also trained model weights saved them in model/: that folder is the adapter's base model."""
    run = tmp_path / "with_model"
    shutil.copytree(run_dir, run)
    shutil.copytree(tiny_t5_dir, run / "model")
    assert export_peft.main([str(run), str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run / "model")


def _finished_run(tmp_path, model_name, results_extra=None, width=32):
    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text(json.dumps({"task": "sst2", "prefix_len": 10, "freeze_weights": 1, "seq_len": 64,
                                               "prefix_MLP": "MLP1", "residual": 1, "model_name": str(model_name)}))
    (run / "results.json").write_text(json.dumps({"task": "sst2", "complete": True, **(results_extra or {})}))
    np.save(run / "prompt.npy", np.zeros((10, width), np.float32))
    return run


def test_encoder_run_is_refused(tmp_path, capsys):
    """A BERT-style encoder run (train.py records its classification head's size) is refused in one line."""
    run = _finished_run(tmp_path, "sentence-transformers/all-MiniLM-L6-v2",
                        {"trainable_params": {"prompt": 3840, "reparam": 0, "model": 0, "head": 770}}, width=384)
    err = _refused([str(run), str(tmp_path / "out")], capsys)
    assert "is a BERT-style encoder run" in err and "T5 and causal LM runs only" in err
    assert not (tmp_path / "out").exists()


def test_encoder_base_model_is_refused_before_loading_it(tmp_path, capsys):
    """Without the head count (an older results.json), the base model's config tells: an encoder is refused."""
    from transformers import BertConfig, BertModel

    bert = tmp_path / "tiny_bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=70)).save_pretrained(bert)
    capsys.readouterr()  # transformers 5's "Writing model shards" bar of the save above is not the script's output
    run = _finished_run(tmp_path, bert)
    err = _refused([str(run), str(tmp_path / "out")], capsys)
    assert "is a BERT-style encoder" in err and "T5 and causal LM runs only" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_run_folder_adapter_is_the_exported_one(run_dir, adapter_dir):
    """train.py wrote run_dir/adapter/ itself (--save_adapter auto): the same files as export_peft.py writes."""
    inside = run_dir / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (inside / name).read_bytes() == (adapter_dir / name).read_bytes(), name

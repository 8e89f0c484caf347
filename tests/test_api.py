"""The library front door (residual_prompts): config validation, a transformers.Trainer run equal to train.py's
train step, PEFT parity, save_pretrained / PeftModel.from_pretrained / load_residual_prompt, the example script."""
from __future__ import annotations

import json

import pytest
import torch

import data_utils
import train_utils as tu
from conftest import ROOT, run_py, trainer_losses
from residual_prompts import (ConfigError, ResidualPromptConfig, get_residual_prompt_model, load_model,
                              load_residual_prompt)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---- config ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("num_virtual_tokens", 0), ("reparameterization", "MLP3"),
                                         ("bottleneck", -1), ("residual", 2), ("dropout", 1.5), ("init", "zeros"),
                                         ("nonlinearity", "gelu"), ("seed", -1), ("num_virtual_tokens", 2.0)])
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"ResidualPromptConfig.{field} must be") as e:
        ResidualPromptConfig(**{field: value})
    assert "\n" not in str(e.value)


def test_config_round_trips_and_reads_train_py_flags():
    c = ResidualPromptConfig(num_virtual_tokens=4, reparameterization="None", seed=3)
    assert c.reparameterization is None and ResidualPromptConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown ResidualPromptConfig field"):
        ResidualPromptConfig.from_dict({"prefix_len": 3})
    flags = {"prefix_len": 7, "prefix_MLP": "MLP2", "bottleneck_size": 12, "residual": 0, "separate_mlps": 1,
             "nonlinearity": "tanh", "mlp_layer_norm": 0, "mlp_dropout": 0.1, "mlp2_shared_weights": 1,
             "prompt_init": "uniform", "prefix_path": "", "seed": 5, "lr": 0.3}
    assert ResidualPromptConfig.from_cli(flags) == ResidualPromptConfig(
        num_virtual_tokens=7, reparameterization="MLP2", bottleneck=12, residual=False, separate_networks=True,
        nonlinearity="tanh", layer_norm=False, dropout=0.1, mlp2_shared_weights=True, init="uniform", seed=5)


# ---- T5 ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_nodrop(tiny_t5_anywhere, tmp_path_factory):
    """conftest's tiny T5 with dropout 0 (its attention reads dropout_rate when built): Trainer steps and train
    steps then compute the same function."""
    from transformers import T5ForConditionalGeneration

    model, tok = load_model(str(tiny_t5_anywhere))
    model.config.dropout_rate = 0.0
    again = T5ForConditionalGeneration(model.config)
    again.load_state_dict(model.state_dict())
    out = tmp_path_factory.mktemp("t5_nodrop")
    again.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _t5(path, config, seed=0):
    model, tok = load_model(str(path))
    model.requires_grad_(False)
    torch.manual_seed(seed)
    task = data_utils.get_task("cb")
    return get_residual_prompt_model(model, config, tok, label_words=task.label_words, seq_len=64), tok, task


def _cb_batches(wrapper, tok, task, data_dir, n=3, batch_size=4):
    split = wrapper.encode_split(task, data_utils.build_splits(task, str(data_dir))["train"], tok, 64)
    return [{k: v for k, v in b.items() if k != "rows"}
            for b in list(tu.make_batches(split, batch_size, task.target_len))[:n]]


def _hf(batch, pad_id):
    src, tgt = batch["source_ids"], batch["target_ids"]
    return {"input_ids": src, "attention_mask": (src != pad_id).long(), "labels": tgt.masked_fill(tgt == pad_id, -100)}


def test_trainer_steps_equal_train_py_train_steps(t5_nodrop, fixture_data_dir, tmp_path):
    """Three steps of transformers.Trainer on the API model against three train_utils.train_step calls (what train.py
    runs), same init, batches and optimizer (AdamW over param_groups, wd 1e-5): same losses and prompts (1e-6)."""
    config = ResidualPromptConfig(num_virtual_tokens=5, reparameterization="MLP1", bottleneck=16)
    ours, tok, task = _t5(t5_nodrop, config)
    batches = _cb_batches(ours, tok, task, fixture_data_dir)
    opt = tu.build_optimizer("torch_adamw", ours, 0.3, weight_decay=1e-5)
    ours.train()
    expected = [float(tu.train_step(ours, opt, b)) for b in batches]

    rp, _, _ = _t5(t5_nodrop, config)
    seen = trainer_losses(rp, batches, lambda b: _hf(b, rp.pad_id), tmp_path)
    assert len(seen) == 3
    for a, b in zip(seen, expected):
        assert abs(a - b) <= 1e-6 * abs(b)
    assert rel(rp.prompt.detach(), ours.prompt.detach()) < 1e-6
    assert rel(rp.projected_prompt().detach(), ours.projected_prompt().detach()) < 1e-6


def test_one_step_equals_peft_prompt_tuning(t5_nodrop, fixture_data_dir):
    """Network off, the same initial prompt: the API's loss and prompt gradient equal PEFT's PromptTuningConfig
    model's on the same batch (1e-6 relative)."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    rp, tok, task = _t5(t5_nodrop, ResidualPromptConfig(num_virtual_tokens=6, reparameterization=None))
    batch = _hf(_cb_batches(rp, tok, task, fixture_data_dir, n=1)[0], rp.pad_id)
    loss = rp(**batch).loss
    loss.backward()

    base, _ = load_model(str(t5_nodrop))
    peft_model = get_peft_model(base, PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=6,
                                                         num_transformer_submodules=1))
    emb = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.copy_(rp.prompt.detach())
    out = peft_model(**batch, decoder_attention_mask=(batch["labels"] != -100).long())
    out.loss.backward()
    assert abs(float(out.loss) - float(loss)) <= 1e-6 * abs(float(loss))
    assert rel(emb.grad, rp.prompt.grad) < 1e-6


def test_save_pretrained_loads_in_peft_and_back_exactly(t5_nodrop, fixture_data_dir, tmp_path):
    from peft import PeftModel

    rp, tok, task = _t5(t5_nodrop, ResidualPromptConfig(num_virtual_tokens=4, bottleneck=8))
    with torch.no_grad():
        rp.prompt.add_(0.5)  # a trained-looking prompt, not the init
    rp.eval()
    batch = _hf(_cb_batches(rp, tok, task, fixture_data_dir, n=1)[0], rp.pad_id)
    with torch.no_grad():
        ours = rp(**batch).loss
    rp.save_pretrained(tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "residual_prompt.pt",
            "residual_prompt_config.json"} <= files
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"

    base, _ = load_model(str(t5_nodrop))
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "out")).eval()
    with torch.no_grad():
        theirs = peft_model(**batch, decoder_attention_mask=(batch["labels"] != -100).long()).loss
    assert abs(float(theirs) - float(ours)) <= 1e-5 * abs(float(ours))

    again, _ = load_model(str(t5_nodrop))
    back = load_residual_prompt(again.requires_grad_(False), str(tmp_path / "out"), tok)
    assert torch.equal(back.prompt.detach(), rp.prompt.detach())
    assert all(torch.equal(a, b) for a, b in zip(back.reparam.state_dict().values(), rp.reparam.state_dict().values()))
    assert back.prompt_config == rp.prompt_config


def test_state_dict_is_what_trains_and_loads_back(t5_nodrop):
    """transformers.Trainer checkpoints a non-PreTrainedModel with state_dict() and loads it with strict=False."""
    rp, _, _ = _t5(t5_nodrop, ResidualPromptConfig(num_virtual_tokens=3, bottleneck=8))
    sd = rp.state_dict()
    assert set(sd) == {n for n, p in rp.named_parameters() if p.requires_grad}
    assert all(k.startswith("soft_prompt.") for k in sd)
    other, _, _ = _t5(t5_nodrop, ResidualPromptConfig(num_virtual_tokens=3, bottleneck=8), seed=1)
    result = other.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and torch.equal(other.prompt, rp.prompt)


def test_print_trainable_parameters(t5_nodrop, capsys):
    rp, _, _ = _t5(t5_nodrop, ResidualPromptConfig(num_virtual_tokens=3, bottleneck=8))
    rp.print_trainable_parameters()
    n = 3 * 32 + (32 * 8 + 8) + (8 * 32 + 32) + 2 * 32  # prompt + Linear(H, M) + Linear(M, H) + LayerNorm
    assert f"trainable params: {n:,d} || all params:" in capsys.readouterr().out


def test_save_pretrained_without_prompt_is_refused(t5_nodrop, tmp_path):
    model, tok = load_model(str(t5_nodrop))
    with pytest.raises(ConfigError, match="no residual prompt"):
        get_residual_prompt_model(model, None, tok).save_pretrained(tmp_path / "x")


# ---- BERT-style encoders ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "the", "cat", "is", "on",
             "mat", "premise", "hypothesis", "good", "bad", ":", ".", ","] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    out = tmp_path_factory.mktemp("tiny_bert")
    (out / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0), add_pooling_layer=False).save_pretrained(out)
    BertTokenizer(str(out / "vocab.txt")).save_pretrained(out)
    return out


def test_encoder_trains_saves_and_reloads_exactly(api_bert_dir, tmp_path):
    from peft import PeftModel

    model, tok = load_model(str(api_bert_dir))
    model.requires_grad_(False)
    rp = get_residual_prompt_model(model, ResidualPromptConfig(num_virtual_tokens=4, bottleneck=8), tok,
                                   label_words=("bad", "good"), seq_len=64)
    enc = tok(["the cat is good", "the mat is bad ."], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([1, 0])}
    batch.pop("token_type_ids")
    opt = torch.optim.AdamW(rp.param_groups(0.1), lr=0.1)
    out = rp(**batch)
    assert out.logits.shape == (2, 2) and out.loss.ndim == 0
    out.loss.backward()
    opt.step()
    assert {n for n, p in rp.named_parameters() if p.grad is not None} == set(rp.state_dict())
    rp.eval()
    with torch.no_grad():
        logits = rp(**batch).logits
    rp.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["task_type"] == "FEATURE_EXTRACTION"
    base, _ = load_model(str(api_bert_dir))
    PeftModel.from_pretrained(base, str(tmp_path / "out"))  # loads (PEFT puts the prompt before [CLS]: no head)
    again, _ = load_model(str(api_bert_dir))
    back = load_residual_prompt(again, str(tmp_path / "out"), tok).eval()
    with torch.no_grad():
        assert torch.equal(back(**batch).logits, logits)


# ---- the example, as a user runs it --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_trainer_example_runs_and_writes_a_peft_adapter(kind, tiny_t5_anywhere, api_bert_dir, fixture_data_dir,
                                                       tmp_path):
    model_dir = tiny_t5_anywhere if kind == "t5" else api_bert_dir
    out = tmp_path / "out"
    res = run_py([str(ROOT / "examples" / "trainer_residual_prompt.py"), "--model_name", str(model_dir),
                  "--data_dir", str(fixture_data_dir), "--task", "cb", "--max_steps", "3", "--output_dir", str(out),
                  "--seq_len", "64", "--batch_size", "4"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "final training loss:" in res.stdout and "trainable params:" in res.stdout
    from peft import PeftModel

    base, _ = load_model(str(model_dir))
    PeftModel.from_pretrained(base, str(out))

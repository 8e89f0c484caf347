"""Decoder-only language models (residual_prompts/causal_lm.py): detection, PEFT parity on tiny GPT-2 and Llama,
the residual MLP's projected prompt, right padding and positions, the shared KV cache in evaluation, the library API
inside transformers.Trainer, train.py's refusals; (slow) a CB run on a tiny Llama through train.py: every output,
resume after SIGKILL, its PEFT adapter and predict.py; torchrun with two processes against one.

Tiny random models built here, offline: GPT-2 with a byte-level BPE trained in the test (no pad token, as GPT-2's),
Llama with conftest's written T5 sentencepiece vocabulary (fast tests) or the real one in ../shared (the run).
"""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import data_utils
import train_utils as tu
from conftest import FIXTURE_DATA, run_py, trainer_losses
from residual_prompts import ResidualPromptConfig, family_of, get_residual_prompt_model, load_model
from residual_prompts.causal_lm import PAD, PromptedCausalLM

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")]
TASK = data_utils.get_task("cb")


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def fixture_rows(split="train"):
    return data_utils.build_splits(TASK, str(FIXTURE_DATA))[split]


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A GPT-2-style byte-level BPE (eos = bos = <|endoftext|>, no pad) trained on the fixture rows; the label
    words are frequent in its corpus, so each is one or two pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [data_utils.format_example(TASK, r)[0] for s in ("train", "val") for r in fixture_rows(s)]
    texts += [" " + " ".join(TASK.label_words)] * 50 + ["the cat is on the mat"] * 5
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_gpt2(tokenizer, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=256,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos,
                                      eos_token_id=eos))


def tiny_llama(tokenizer, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, bos_token_id=None))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def arch(request, bpe_tokenizer, written_t5_tokenizer):
    """(name, model factory, tokenizer) of each tiny architecture: absolute positions (GPT-2), rotary (Llama)."""
    if request.param == "gpt2":
        tok = bpe_tokenizer
        PromptedCausalLM.prepare_tokenizer("tiny gpt2", None, tok)  # pad = eos, as load_model does
        return "gpt2", tiny_gpt2, tok
    return "llama", tiny_llama, written_t5_tokenizer


def wrap(factory, tok, config, seq_len=128, seed=0):
    model = factory(tok)
    model.requires_grad_(False)
    torch.manual_seed(seed)
    return get_residual_prompt_model(model, config, tok, seq_len=seq_len)


def batches(rp, tok, n=1, batch_size=4, split="train"):
    enc = rp.encode_split(TASK, fixture_rows(split), tok, 128)
    return [{k: v for k, v in b.items() if k != "rows"}
            for b in list(tu.make_batches(enc, batch_size, TASK.target_len))[:n]]


def hf_inputs(batch, pad_id):
    """The Hugging Face causal LM batch of a batch, built independently of the wrapper: each row's source then
    target, right-padded with the tokenizer's pad, labels -100 except at the target."""
    rows, labels = [], []
    for s, t in zip(batch["source_ids"].tolist(), batch["target_ids"].tolist()):
        s, t = [i for i in s if i != PAD], [i for i in t if i != PAD]
        rows.append(s + t)
        labels.append([-100] * len(s) + t)
    n = max(map(len, rows))
    ids = torch.tensor([r + [pad_id] * (n - len(r)) for r in rows])
    return {"input_ids": ids, "attention_mask": torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows]),
            "labels": torch.tensor([lab + [-100] * (n - len(lab)) for lab in labels])}


# ---- detection and loading ---------------------------------------------------------------------------------------
def test_family_of_detects_the_causal_lm_types():
    from transformers import AutoConfig

    assert {t: family_of(AutoConfig.for_model(t)) for t in ("gpt2", "llama", "qwen2", "mistral", "t5", "bert")} == {
        "gpt2": "causal_lm", "llama": "causal_lm", "qwen2": "causal_lm", "mistral": "causal_lm", "t5": "t5",
        "bert": "encoder"}
    assert family_of(AutoConfig.for_model("bart")) is None  # an encoder-decoder, not T5


def test_gpt2_without_pad_token_loads_with_eos_as_pad(bpe_tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    assert tok.pad_token_id is None
    tiny_gpt2(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, loaded = load_model(str(tmp_path))
    assert type(model).__name__ == "GPT2LMHeadModel" and loaded.pad_token_id == loaded.eos_token_id


def test_a_model_without_lm_head_is_refused_in_one_line(written_t5_tokenizer):
    from transformers import LlamaModel

    from residual_prompts import ConfigError

    body = tiny_llama(written_t5_tokenizer).model
    assert isinstance(body, LlamaModel)
    with pytest.raises(ConfigError, match="AutoModelForCausalLM") as e:
        get_residual_prompt_model(body, ResidualPromptConfig(num_virtual_tokens=2), written_t5_tokenizer)
    assert "\n" not in str(e.value)


# ---- the sequence -----------------------------------------------------------------------------------------------
def test_targets_end_in_eos_and_count_it_even_where_pad_is_eos(arch):
    name, factory, tok = arch
    rp = wrap(factory, tok, ResidualPromptConfig(num_virtual_tokens=3))
    split = rp.encode_split(TASK, fixture_rows(), tok, 128)
    assert split.pad_id == PAD and all(t[-1] == tok.eos_token_id for t in split.target_ids)
    assert {rp._strings(torch.tensor([t]))[0] for t in split.target_ids} <= set(TASK.label_words)
    batch = batches(rp, tok)[0]
    ids, labels, mask = rp.sequences(batch)
    for row, lab in zip(ids.tolist(), labels.tolist()):  # right padding; the label run is the target, eos last
        n = sum(i != PAD for i in row)
        assert all(i == PAD for i in row[n:]) and lab[n - 1] == tok.eos_token_id
    assert int(rp.n_targets(batch)) == int((labels != -100).sum())


def test_one_step_equals_peft_prompt_tuning(arch):
    """Network off, the same initial prompt: loss and prompt gradient equal PEFT's PromptTuningConfig(CAUSAL_LM)
    model's on the same batch (1e-6 relative), GPT-2 (absolute positions) and Llama (rotary)."""
    from peft import PromptTuningConfig, get_peft_model

    name, factory, tok = arch
    rp = wrap(factory, tok, ResidualPromptConfig(num_virtual_tokens=5, reparameterization=None))
    inputs = hf_inputs(batches(rp, tok)[0], tok.pad_token_id)
    loss = rp(**inputs).loss
    loss.backward()

    peft_model = get_peft_model(factory(tok), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    emb = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.copy_(rp.prompt.detach())
    out = peft_model(**inputs)
    out.loss.backward()
    ours, theirs = float(loss.detach()), float(out.loss.detach())
    assert abs(theirs - ours) <= 1e-6 * abs(ours)
    assert rel(emb.grad, rp.prompt.grad) < 1e-6 and float(rp.prompt.grad.abs().max()) > 0


def test_mlp1_projected_prompt_is_res_mlps_and_feeds_the_model(arch):
    from res_mlp import ResMLP

    name, factory, tok = arch
    rp = wrap(factory, tok, ResidualPromptConfig(num_virtual_tokens=4, reparameterization="MLP1", bottleneck=8))
    net = ResMLP("MLP1", rp.prompt.shape[1], bottleneck=8)
    net.load_state_dict(rp.reparam.state_dict())
    rp.eval()
    expected = net.eval()(rp.prompt.detach())
    assert torch.equal(rp.projected_prompt().detach(), expected)
    assert not torch.equal(expected, rp.prompt.detach())  # the network does something
    batch = batches(rp, tok)[0]
    with torch.no_grad():
        assert float(rp(**hf_inputs(batch, tok.pad_token_id)).loss) == float(rp.loss(batch, expected))


def test_a_rows_numbers_do_not_depend_on_its_batch(arch):
    """Right padding with each row at positions 0..P+n-1: a row scored alone or in a batch of longer and shorter
    rows gets the same loss (1e-5) and the same greedy prediction."""
    name, factory, tok = arch
    rp = wrap(factory, tok, ResidualPromptConfig(num_virtual_tokens=3, reparameterization=None)).eval()
    with torch.no_grad():
        rp.prompt.mul_(20)  # far from the vocabulary: predictions differ between rows
    batch = batches(rp, tok, batch_size=6)[0]
    prompt = rp.projected_prompt()
    together = rp.evaluate_batch(batch, prompt, TASK.target_len)
    for i in range(6):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        alone = rp.evaluate_batch(one, prompt, TASK.target_len)
        assert alone[0][0] == together[0][i]
        assert abs(float(alone[2][0]) - float(together[2][i])) <= 1e-5 * float(alone[2][0])


def test_shared_cache_evaluation_equals_the_two_pass_path(arch, monkeypatch):
    """evaluate_batch (prompt + source once, the KV cache shared by generation and loss) against decode +
    token_losses (each running the context): identical predictions (so identical predictions_val.jsonl records)
    and losses within 1e-6 relative."""
    name, factory, tok = arch
    rp = wrap(factory, tok, ResidualPromptConfig(num_virtual_tokens=4, bottleneck=8)).eval()
    with torch.no_grad():
        rp.prompt.mul_(20)
    rows = fixture_rows("val")
    split = rp.encode_split(TASK, rows, tok, 128)
    shared = tu.evaluate(rp, split, TASK, batch_size=4)

    def two_pass(batch, prompt, max_length, synced=False, chunks=None):
        dec, tgt = rp.decode(batch, prompt, max_length, synced)
        return (dec, tgt, *rp.token_losses(batch, prompt))

    monkeypatch.setattr(rp, "evaluate_batch", two_pass)
    separate = tu.evaluate(rp, split, TASK, batch_size=4)
    records = [[data_utils.prediction_record(TASK, r, p) for r, p in zip(rows, res["predictions"])]
               for res in (shared, separate)]
    assert records[0] == records[1] and len(set(shared["predictions"])) > 1
    assert shared["score"] == separate["score"]
    assert abs(shared["loss"] - separate["loss"]) <= 1e-6 * abs(separate["loss"])


def test_hf_batches_left_or_right_padded_give_the_same_loss(arch):
    """forward's Hugging Face batch: the source is the unmasked positions labelled -100, the target the labelled
    ones, wherever the padding is; both give train.py's batch loss."""
    name, factory, tok = arch
    rp = wrap(factory, tok, ResidualPromptConfig(num_virtual_tokens=3, bottleneck=8)).eval()
    batch = batches(rp, tok)[0]
    right = hf_inputs(batch, tok.pad_token_id)
    n = right["attention_mask"].sum(1)
    left = {k: torch.stack([torch.roll(v[i], int(v.shape[1] - n[i])) for i in range(len(v))])
            for k, v in right.items()}  # each row's padding moved to the front
    assert not torch.equal(left["input_ids"], right["input_ids"])
    with torch.no_grad():
        expected = float(rp.loss(batch, rp.projected_prompt()))
        assert float(rp(**right).loss) == expected and float(rp(**left).loss) == expected


def test_bf16_autocast_evaluates(written_t5_tokenizer):
    """--precision bf16: the frozen model under autocast, the prompt in fp32; evaluation runs and gives the fp32
    predictions' kind of output (strings per row, a finite loss)."""
    rp = wrap(tiny_llama, written_t5_tokenizer, ResidualPromptConfig(num_virtual_tokens=3, bottleneck=8))
    rp.precision = "bf16"
    split = rp.encode_split(TASK, fixture_rows("val"), written_t5_tokenizer, 128)
    res = tu.evaluate(rp, split, TASK, batch_size=4)
    assert len(res["predictions"]) == len(split) and torch.isfinite(torch.tensor(res["loss"]))
    assert rp.prompt.dtype == torch.float32


# ---- the library API inside transformers.Trainer -------------------------------------------------------------------
def test_trainer_steps_equal_train_py_train_steps(written_t5_tokenizer, tmp_path):
    """transformers.Trainer on get_residual_prompt_model's causal LM wrapper, fed Hugging Face batches (input_ids =
    source + target, labels -100 but on the target), against train_utils.train_step on train.py's batches: the same
    losses and prompts (1e-6) after three steps."""
    tok = written_t5_tokenizer
    config = ResidualPromptConfig(num_virtual_tokens=4, reparameterization="MLP1", bottleneck=8)
    ours = wrap(tiny_llama, tok, config)
    bs = batches(ours, tok, n=3)
    opt = tu.build_optimizer("torch_adamw", ours, 0.3, weight_decay=1e-5)
    ours.train()
    expected = [float(tu.train_step(ours, opt, b)) for b in bs]

    rp = wrap(tiny_llama, tok, config)
    seen = trainer_losses(rp, bs, lambda b: hf_inputs(b, tok.pad_token_id), tmp_path)
    assert len(seen) == 3 and expected[0] != expected[2]
    for a, b in zip(seen, expected):
        assert abs(a - b) <= 1e-6 * abs(b)
    assert rel(rp.projected_prompt().detach(), ours.projected_prompt().detach()) < 1e-6


# ---- train.py ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(written_t5_tokenizer, tmp_path_factory):
    """A tiny random Llama (2 layers, width 16, rotary positions) with the written T5 vocabulary, saved."""
    out = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama(written_t5_tokenizer).save_pretrained(out)
    written_t5_tokenizer.save_pretrained(out)
    return out


def train_args(model_dir, save_dir, name, *extra):
    return ["--task", "cb", "--data_dir", str(FIXTURE_DATA), "--model_name", str(model_dir), "--prefix_MLP", "MLP1",
            "--bottleneck_size", "16", "--prefix_len", "4", "--mlp_dropout", "0.1", "--freeze_weights", "1",
            "--early_stopping", "1", "--get_test_subset", "1", "--num_epochs", "2", "--batch_size", "4",
            "--lr", "0.3", "--seq_len", "128", "--save_every_steps", "2", "--save_dir", str(save_dir),
            "--save_name", name, "--progress", "0", *map(str, extra)]


@pytest.mark.parametrize("flag", [["--pooling", "mean"], ["--head_lr", "0.01"], ["--compile", "1"],
                                  ["--save_adapter", "1", "--prefix_len", "0", "--freeze_weights", "0"]])
def test_train_py_refuses_what_does_not_apply_in_one_line(llama_dir, tmp_path, capsys, flag):
    import train

    code = train.main(train_args(llama_dir, tmp_path, "r", *flag))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("train.py: error:"), err
    assert not (tmp_path / "r" / "results.json").exists()


def outcome(run_dir):
    res = json.loads((run_dir / "results.json").read_text())
    res.pop("wall_time_s")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return (run_dir / "prompt.npy").read_bytes(), ckpt["prompt"].numpy().tobytes(), res


def peft_predictions(model_dir, adapter, rows, tok):
    """Greedy generation by PEFT's own model around the adapter, one row at a time (no padding). use_cache=False:
    peft 0.21 under transformers 5 reads the cache from "past_key_values", which transformers now passes as "cache",
    so with a cache PEFT inserts the prompt again before every generated token (docs/DECODERS.md)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    split = PromptedCausalLM.encode_split(TASK, rows, tok, 128)
    out = []
    for ids in split.source_ids:
        with torch.no_grad():
            gen = model.generate(input_ids=torch.tensor([ids]),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=TASK.target_len, do_sample=False, pad_token_id=tok.pad_token_id,
                                 use_cache=False)
        new = gen[0, len(ids):].tolist()  # generate returns the input, then the new tokens
        new = new[:new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        out.append(tok.decode(new, skip_special_tokens=True).strip())
    return out


@pytest.mark.slow
def test_cb_run_on_tiny_llama_outputs_resume_adapter_predict(llama_dir, written_t5_tokenizer, tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    base = run_py(["train.py", *train_args(llama_dir, tmp_path, "base", "--save_adapter", "auto")], env=env)
    assert base.returncode == 0, base.stderr[-2000:]
    run = tmp_path / "base"
    assert {"args.json", "results.json", "all_results.json", "metrics.jsonl", "score_dict.npy", "prompt.npy",
            "checkpoint.pt", "predictions_val.jsonl", "predictions_test.jsonl", "adapter"} <= set(os.listdir(run))
    assert not (run / "train_state.pt").exists()
    results = json.loads((run / "results.json").read_text())
    assert results["complete"] and results["family"] == "causal_lm"
    init_ids = results["prompt_init"]["token_ids"]  # the prompt started as these embedding rows: it moved
    from transformers import AutoModelForCausalLM
    emb = AutoModelForCausalLM.from_pretrained(llama_dir).get_input_embeddings().weight.detach()
    assert not torch.equal(torch.load(run / "checkpoint.pt", weights_only=True)["prompt"], emb[init_ids])
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"

    # SIGKILL before step 7 of 10 (checkpoints every 2 steps), then the same command: bit-identical
    args = train_args(llama_dir, tmp_path, "killed")
    killed = run_py(["tests/fault_runner.py", "kill_at_step:7", "--", *args], env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_py(["train.py", *args], env=env)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-2000:]
    assert outcome(tmp_path / "killed") == outcome(run)

    # PEFT's model around the adapter reproduces the run's predictions, row by row
    for split in ("val", "test"):
        records = [json.loads(line) for line in (run / f"predictions_{split}.jsonl").read_text().splitlines()]
        by_id = {r["idx"]: r for s in ("train", "val") for r in fixture_rows(s)}
        rows = [by_id[rec["id"]] for rec in records]
        assert peft_predictions(llama_dir, run / "adapter", rows, written_t5_tokenizer) == [
            rec["prediction"] for rec in records]

    # predict.py scores the finished run with its best prompt: the same predictions
    proc = run_py(["scripts/predict.py", str(run), "--out", str(tmp_path / "p.jsonl")], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = {r["id"]: r["prediction"] for r in map(json.loads, (tmp_path / "p.jsonl").read_text().splitlines())}
    val = [json.loads(line) for line in (run / "predictions_val.jsonl").read_text().splitlines()]
    assert all(got[r["id"]] == r["prediction"] for r in val)


@pytest.mark.slow
def test_torchrun_two_processes_follow_the_one_process_run(llama_dir, tmp_path):
    """DDP (gloo, CPU): two processes give the one-process run's step losses and prompt (1e-5) and the same
    validation metric (every row scored once; the greedy loop runs its whole budget on both ranks)."""
    import socket

    import numpy as np

    def torchrun(nproc, name):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = train_args(llama_dir, tmp_path, name, "--model_dropout", "0", "--mlp_dropout", "0",
                          "--batch_size", "3", "--eval_batch_size", "4")
        proc = run_py(["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                       "--master_port", str(port), "train.py", *args],
                      env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / name / "results.json").read_text()), np.load(tmp_path / name / "prompt.npy")

    (one, p1), (two, p2) = torchrun(1, "one"), torchrun(2, "two")
    assert one["world_size"] == 1 and two["world_size"] == 2
    for a, b in zip(one["train"]["step_losses"], two["train"]["step_losses"]):
        assert len(a) == len(b) == 7  # ceil(20 / 3)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=0)
    assert np.linalg.norm(p2 - p1) / np.linalg.norm(p1) < 1e-5
    assert two["validation"][-1]["metric"] == one["validation"][-1]["metric"]
    assert two["validation"][-1]["loss"] == pytest.approx(one["validation"][-1]["loss"], rel=1e-5)

"""--precision bf16/fp16 (residual_prompts/base.py): a frozen model's weights are stored in the reduced dtype, what
trains (prompt, its network, a head) stays fp32 and so does the loss; a model whose weights train keeps fp32 master
weights under autocast; the loss after 20 tiny-T5 steps stays within a stated tolerance of fp32; a CPU whose
reduced-precision products are not faster than fp32 gets one warning naming the measured rates. Runs without
../shared (the tiny T5 and the CB rows written for the tests)."""
import json

import pytest
import torch
from transformers import BertConfig, BertModel

import data_utils
import train
import train_utils as tu
from residual_prompts import base, models

# The loss after 20 tiny-T5 steps, bf16 against fp32 (the same seeds, dropout on): 0.12% apart when measured (0.03%
# with dropout off); the tolerance stated in --help and docs/PERFORMANCE.md is 1%.
LOSS_TOLERANCE = 0.01

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on one thread


def tiny_run(model_dir, data_dir, precision, steps=20, freeze=True):
    """``steps`` train_step calls of a Residual PT wrapper (MLP1, 4 tokens) on the fixture's CB rows, the same
    seeds for every precision: -> (the wrapper, the losses)."""
    model, tokenizer = models.load_model(str(model_dir))
    models.freeze_model(model, freeze, "xxxxxxx")
    torch.manual_seed(0)
    config = models.ResidualPromptConfig(num_virtual_tokens=4, reparameterization="MLP1", init="vocab", seed=0)
    wrapper = models.get_residual_prompt_model(model, config, tokenizer, seq_len=512, precision=precision)
    task = data_utils.get_task("cb")
    split = wrapper.encode_split(task, data_utils.load_split(task, "train", str(data_dir)), tokenizer, 512)
    batches = [{k: v for k, v in b.items() if k != "rows"} for b in tu.make_batches(split, 4, task.target_len)]
    optimizer = tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    wrapper.train()
    torch.manual_seed(1)
    losses = [float(tu.train_step(wrapper, optimizer, batches[i % len(batches)], scaler=scaler))
              for i in range(steps)]
    return wrapper, losses


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_frozen_weights_are_stored_low_and_what_trains_stays_fp32(tiny_t5_anywhere, fixture_data_dir, precision):
    wrapper, losses = tiny_run(tiny_t5_anywhere, fixture_data_dir, precision, steps=2)
    dtype = models.PRECISIONS[precision]
    assert wrapper.weights_dtype == dtype
    assert {p.dtype for p in wrapper.model.parameters()} == {dtype}  # every frozen weight: half the bytes
    assert [p.dtype for p in wrapper.parameters() if p.requires_grad] == [torch.float32] * len(
        [p for p in wrapper.parameters() if p.requires_grad])
    assert wrapper.projected_prompt().dtype == torch.float32
    batch = {k: v[:2] for k, v in next(iter(tu.make_batches(
        wrapper.encode_split(data_utils.get_task("cb"), data_utils.load_split(
            data_utils.get_task("cb"), "train", str(fixture_data_dir))[:2], wrapper.tokenizer, 512),
        2, 3))).items() if k != "rows"}
    wrapper.eval()  # no dropout: the two forwards below compute the same thing
    sums, _ = wrapper.token_losses(batch, wrapper.projected_prompt())
    assert sums.dtype == torch.float32
    assert wrapper.loss(batch, wrapper.projected_prompt()).dtype == torch.float32
    out = wrapper(source_ids=batch["source_ids"], target_ids=batch["target_ids"])  # the Hugging Face forward
    assert out.loss.dtype == torch.float32
    mean = float(sums.detach().sum() / (batch["target_ids"] != 0).sum())
    assert out.loss.detach().item() == pytest.approx(mean, rel=1e-5)
    out.loss.backward()
    assert wrapper.prompt.grad is not None and wrapper.prompt.grad.dtype == torch.float32
    # no autocast: the weights already are the dtype the products run in
    assert not torch.is_autocast_enabled("cpu") and isinstance(wrapper.autocast(), type(base.contextlib.nullcontext()))
    assert all(torch.isfinite(torch.tensor(losses)))


def test_a_model_whose_weights_train_keeps_fp32_weights_under_autocast(tiny_t5_anywhere, fixture_data_dir):
    wrapper, losses = tiny_run(tiny_t5_anywhere, fixture_data_dir, "bf16", steps=2, freeze=False)
    assert wrapper.weights_dtype is None
    assert {p.dtype for p in wrapper.model.parameters()} == {torch.float32}
    with wrapper.autocast():
        assert torch.is_autocast_enabled("cpu")
    assert all(torch.isfinite(torch.tensor(losses)))


def test_bf16_loss_after_20_tiny_t5_steps_is_within_the_stated_tolerance_of_fp32(tiny_t5_anywhere, fixture_data_dir):
    _, fp32 = tiny_run(tiny_t5_anywhere, fixture_data_dir, "fp32")
    _, bf16 = tiny_run(tiny_t5_anywhere, fixture_data_dir, "bf16")
    assert bf16[-1] == pytest.approx(fp32[-1], rel=LOSS_TOLERANCE)
    assert bf16 != fp32  # it really ran in bf16


def test_bf16_training_attention_is_eager_and_evaluation_sdpa_with_the_same_numbers_in_eval(tiny_t5_anywhere):
    """The bf16 attention switch (base._reduced_attention): training with dropout takes the model's eager path,
    evaluation SDPA; in eval mode the wrapper gives SDPA's numbers exactly."""
    model, tokenizer = models.load_model(str(tiny_t5_anywhere))
    models.freeze_model(model, True, "xxxxxxx")
    config = models.ResidualPromptConfig(num_virtual_tokens=2, reparameterization="MLP1", init="vocab", seed=0)
    wrapper = models.get_residual_prompt_model(model, config, tokenizer, precision="bf16")
    assert wrapper.model.config._attn_implementation == base.REDUCED_ATTENTION
    calls = []
    t5 = __import__("transformers.models.t5.modeling_t5", fromlist=["eager_attention_forward"])
    original = t5.eager_attention_forward
    t5.eager_attention_forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        batch = {"source_ids": torch.tensor([[5, 6, 7, 1]]), "target_ids": torch.tensor([[8, 1]])}
        wrapper.eval()
        low = wrapper.loss(batch, wrapper.projected_prompt())
        assert not calls
        wrapper.train()
        wrapper.loss(batch, wrapper.projected_prompt())
        assert calls
    finally:
        t5.eager_attention_forward = original
    wrapper.model.set_attn_implementation("sdpa")
    wrapper.eval()
    assert torch.equal(wrapper.loss(batch, wrapper.projected_prompt()), low)



def test_an_encoder_keeps_its_head_fp32_over_bf16_weights():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32), add_pooling_layer=False)
    models.freeze_model(model, True, "xxxxxxx")
    config = models.ResidualPromptConfig(num_virtual_tokens=2, reparameterization="MLP1", init="vocab", seed=0)
    wrapper = models.get_residual_prompt_model(model, config, None, label_words=("no", "yes"), seq_len=32,
                                               precision="bf16")
    assert {p.dtype for p in wrapper.model.parameters()} == {torch.bfloat16}
    assert wrapper.head.weight.dtype == torch.float32
    source = torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]])
    logits = wrapper.predict(source, wrapper.projected_prompt())
    assert logits.dtype == torch.float32 and logits.shape == (2, 2)
    sums, _ = wrapper.token_losses({"source_ids": source, "target_ids": torch.tensor([[0], [1]])},
                                   wrapper.projected_prompt())
    sums.sum().backward()
    assert wrapper.prompt.grad.dtype == torch.float32 and wrapper.head.weight.grad.dtype == torch.float32


def test_slow_precision_warning_names_the_measured_rates(monkeypatch):
    assert base.slow_precision_warning("fp32", "cpu") is None
    assert base.slow_precision_warning("bf16", "cuda") is None
    monkeypatch.setattr(base, "matmul_rates", lambda device_type="cpu": {"fp32": 400e9, "bf16": 8e9, "fp16": 5e9})
    message = base.slow_precision_warning("bf16", "cpu")
    assert "slower than fp32" in message and "8.0 GFLOP/s" in message and "400.0" in message
    assert "\n" not in message
    monkeypatch.setattr(base, "matmul_rates", lambda device_type="cpu": {"fp32": 400e9, "bf16": 2000e9, "fp16": 5e9})
    assert base.slow_precision_warning("bf16", "cpu") is None


def test_matmul_rates_are_measured_once_and_leave_the_thread_count_alone():
    threads = torch.get_num_threads()
    rates = base.matmul_rates("cpu")
    assert set(rates) == {"fp32", "bf16", "fp16"} and all(r > 0 for r in rates.values())
    assert base.matmul_rates("cpu") is rates  # cached in memory: measured once per process
    assert torch.get_num_threads() == threads


def test_train_py_warns_once_on_a_cpu_without_bf16_units(tiny_t5_anywhere, fixture_data_dir, tmp_path, capsys,
                                                         monkeypatch):
    monkeypatch.setattr(base, "matmul_rates", lambda device_type="cpu": {"fp32": 400e9, "bf16": 8e9, "fp16": 5e9})
    code = train.main(["--task", "cb", "--data_dir", str(fixture_data_dir), "--model_name", str(tiny_t5_anywhere),
                       "--prefix_MLP", "MLP1", "--num_epochs", "1", "--precision", "bf16", "--save_dir",
                       str(tmp_path), "--save_name", "x", "--progress", "0", "--save_adapter", "0"])
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("--precision bf16 will likely be slower than fp32 here") == 1 and "8.0 GFLOP/s" in err
    assert json.loads((tmp_path / "x" / "args.json").read_text())["precision"] == "bf16"


def test_bf16_training_attention_masks_the_padding(tiny_t5_anywhere):
    """The eager bf16 attention of training gets the model's padding masks (transformers builds none for an attention
    it does not know unless a mask function is registered): a row's loss is the same alone and padded in a batch."""
    model, tokenizer = models.load_model(str(tiny_t5_anywhere))
    models.freeze_model(model, True, "xxxxxxx")
    config = models.ResidualPromptConfig(num_virtual_tokens=2, reparameterization="MLP1", init="vocab", seed=0)
    wrapper = models.get_residual_prompt_model(model, config, tokenizer, precision="bf16").train()
    for module in wrapper.model.modules():  # dropout off everywhere, but the attention still takes its dropout path
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif hasattr(module, "has_relative_attention_bias"):
            module.dropout = 1e-12
    alone = {"source_ids": torch.tensor([[5, 6, 7, 1]]), "target_ids": torch.tensor([[8, 1]])}
    padded = {"source_ids": torch.tensor([[5, 6, 7, 1, 0, 0, 0, 0, 0, 0], [9, 10, 11, 12, 13, 14, 15, 16, 17, 1]]),
              "target_ids": torch.tensor([[8, 1, 0], [9, 10, 1]])}
    prompt = wrapper.projected_prompt()
    one = wrapper.token_losses(alone, prompt)[0][0]
    two = wrapper.token_losses(padded, prompt)[0][0]
    # measured: equal to the last bit; with the pads attended (no mask function registered) 2% apart
    assert float(two) == pytest.approx(float(one), rel=1e-3)



def test_a_causal_lm_gets_bf16_weights_too(written_t5_tokenizer, fixture_data_dir):
    """The precision logic lives in the base class: the decoder-only family stores its frozen weights in bf16 as
    well, and its first training loss is close to fp32's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = written_t5_tokenizer
    task = data_utils.get_task("cb")
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                                             eos_token_id=tok.eos_token_id, bos_token_id=None))
        model.requires_grad_(False)
        torch.manual_seed(0)
        config = models.ResidualPromptConfig(num_virtual_tokens=3, reparameterization="MLP1", bottleneck=8)
        wrapper = models.get_residual_prompt_model(model, config, tok, seq_len=128, precision=precision)
        split = wrapper.encode_split(task, data_utils.load_split(task, "train", str(fixture_data_dir)), tok, 128)
        batch = {k: v for k, v in next(iter(tu.make_batches(split, 4, task.target_len))).items() if k != "rows"}
        optimizer = tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)
        losses[precision] = tu.train_step(wrapper, optimizer, batch)
        if precision == "bf16":
            assert {p.dtype for p in wrapper.model.parameters()} == {torch.bfloat16}
            assert wrapper.prompt.dtype == torch.float32 and wrapper.prompt.grad is None  # stepped, zeroed
    assert losses["bf16"].dtype == torch.float32
    assert float(losses["bf16"]) == pytest.approx(float(losses["fp32"]), rel=2e-2)

"""Trainer invariants on a tiny T5: optimizer rule, prompt initializers, frozen step, padding, evaluation."""
import math

import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

import data_utils
from residual_prompts import models
from residual_prompts import prompts
import train_utils as tu
from residual_prompts.prompts import SoftPrompt
from res_mlp import build_reparam

P = 4


# Every test here runs anywhere (no ../shared): the T5 tokenizer written in conftest and the 20 + 10 CB rows
# committed in tests/fixtures, not the real vocabulary and data.


def tiny_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=32128, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=4,
                   dropout_rate=dropout, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg)


def cb_split(tokenizer, data_dir, n=16, seq_len=512):
    rows = data_utils.load_split(data_utils.get_task("cb"), "train", str(data_dir))[:n]
    return models.PromptT5.encode_split(data_utils.get_task("cb"), rows, tokenizer, seq_len)


# ---- optimizer ----------------------------------------------------------------------------------------------
def test_legacy_adamw_follows_the_2022_rule_and_differs_from_torch():
    torch.manual_seed(0)
    p0 = torch.randn(6)
    grads = [torch.randn(6) for _ in range(3)]
    lr, wd, eps, b1, b2 = 0.3, 1e-5, 1e-8, 0.9, 0.999
    p = p0.clone().requires_grad_()
    opt = tu.LegacyAdamW([p], lr=lr, eps=eps, weight_decay=wd)
    ref, m, v = p0.double().clone(), torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    for t, g in enumerate(grads, 1):
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g.double()
        v = b2 * v + (1 - b2) * g.double() ** 2
        ref = ref - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
        ref = ref - lr * wd * ref  # decay after the update
    torch.testing.assert_close(p.detach().double(), ref, rtol=1e-6, atol=1e-6)

    q = p0.clone().requires_grad_()
    torch_opt = torch.optim.AdamW([q], lr=lr, eps=eps, weight_decay=wd)
    for g in grads:
        q.grad = g.clone()
        torch_opt.step()
    # the decay order alone moves every coordinate by ~lr*wd*|p|
    assert (q.detach() - p.detach()).abs().max() > 1e-7


# ---- prompt initializers ------------------------------------------------------------------------------------
def row_index_table(v=200, h=6):
    """Row i is filled with i, so a prompt row tells which token id it came from."""
    return torch.arange(v, dtype=torch.float32).unsqueeze(1).repeat(1, h)


def test_vocab_init_takes_rows_of_the_table_and_reproduces_the_original_draws():
    table = row_index_table(32128)
    prompt, ids = prompts.init_prompt("vocab", table, 10, seed=0)
    assert prompt.shape == (10, 6)
    assert torch.equal(prompt[:, 0].long(), torch.as_tensor(ids))
    assert (prompt == prompt[:, :1]).all()
    # the original's prompt with numpy seeded 0 (golden/README.md: draws 11-20)
    assert list(ids) == [20757, 22258, 14116, 14935, 15430, 15832, 6744, 19852, 14650, 17089]
    assert not torch.equal(prompts.init_prompt("vocab", table, 10, seed=1)[0], prompt)


def test_vocab_top5000_init_samples_common_pieces_only():
    prompt, ids = prompts.init_prompt("vocab_top5000", row_index_table(32128), 200, seed=0)
    assert ids.min() >= 3 and ids.max() < 5003
    assert torch.equal(prompt[:, 0].long(), torch.as_tensor(ids))


def test_uniform_init_range_and_shape():
    prompt, ids = prompts.init_prompt("uniform", row_index_table(), 50, seed=0)
    assert ids is None and prompt.shape == (50, 6)
    assert prompt.min() >= -0.5 and prompt.max() <= 0.5 and prompt.std() > 0.2


def test_class_label_init_averages_label_pieces_then_samples(written_t5_tokenizer):
    table = row_index_table(32128)
    words = data_utils.get_task("cb").label_words
    prompt, _ = prompts.init_prompt("class_labels", table, 5, seed=0, tokenizer=written_t5_tokenizer, label_words=words)
    for i, w in enumerate(words):
        pieces = written_t5_tokenizer(w, add_special_tokens=False)["input_ids"]
        assert prompt[i, 0].item() == pytest.approx(float(np.mean(pieces)))
    assert 3 <= prompt[3, 0] < 5003 and 3 <= prompt[4, 0] < 5003
    with pytest.raises(tu.ConfigError, match="label words"):
        prompts.init_prompt("class_labels", table, 5, seed=0, tokenizer=written_t5_tokenizer, label_words=())


def test_file_init_checks_shape_dtype_and_pickle(tmp_path):
    table = row_index_table()
    good = tmp_path / "p.npy"
    np.save(good, np.full((P, 6), 0.25, dtype=np.float64))
    prompt, _ = prompts.init_prompt("file", table, P, seed=0, path=str(good))
    assert prompt.dtype == torch.float32 and torch.all(prompt == 0.25)
    np.save(tmp_path / "shape.npy", np.zeros((P + 1, 6)))
    with pytest.raises(tu.ConfigError, match=r"shape \[5, 6\].*expected"):
        prompts.init_prompt("file", table, P, seed=0, path=str(tmp_path / "shape.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(tu.ConfigError, match="pickle"):
        prompts.init_prompt("file", table, P, seed=0, path=str(tmp_path / "obj.npy"))
    np.save(tmp_path / "str.npy", np.array([["a"] * 6] * P))
    with pytest.raises(tu.ConfigError, match="numeric"):
        prompts.init_prompt("file", table, P, seed=0, path=str(tmp_path / "str.npy"))
    with pytest.raises(tu.ConfigError, match="valid: vocab"):
        prompts.init_prompt("zeros", table, P, seed=0)


# ---- model wrapper and steps --------------------------------------------------------------------------------
def make_wrapper(reparam_name="MLP1", freeze=True, seed=0, tokenizer=None):
    model = tiny_model(seed)
    models.freeze_model(model, freeze, "xxxxxxx")
    torch.manual_seed(seed)
    prompt = torch.randn(P, 16) * 0.5
    reparam = build_reparam(reparam_name, 16, P, bottleneck=8)
    return models.PromptT5(model, tokenizer, SoftPrompt(prompt, reparam), seq_len=512)


def test_one_step_changes_only_prompt_and_mlp_when_frozen(written_t5_tokenizer, fixture_data_dir):
    wrapper = make_wrapper()
    split = cb_split(written_t5_tokenizer, fixture_data_dir, n=8)
    before = {n: p.detach().clone() for n, p in wrapper.named_parameters()}
    opt = tu.build_optimizer("legacy_adamw", wrapper, lr=0.3)
    batch = next(tu.make_batches(split, 8, 5))
    wrapper.loss(batch, wrapper.projected_prompt()).backward()
    opt.step()
    changed = {n for n, p in wrapper.named_parameters() if not torch.equal(p, before[n])}
    assert "soft_prompt.prompt" in changed
    reparam = "soft_prompt.reparam."
    assert {n for n in changed if n.startswith(reparam)} == {n for n in before if n.startswith(reparam)}
    assert not [n for n in changed if n.startswith("model.")]


def test_prompt_reaches_the_encoder_and_is_cut_to_seq_len(written_t5_tokenizer, fixture_data_dir):
    wrapper = make_wrapper("None")
    split = cb_split(written_t5_tokenizer, fixture_data_dir, n=4)
    batch = next(tu.make_batches(split, 4, 5))
    embeds, mask = wrapper.encoder_inputs(batch["source_ids"], wrapper.projected_prompt())
    t = batch["source_ids"].shape[1]
    assert embeds.shape == (4, P + t, 16) and mask.shape == (4, P + t)
    torch.testing.assert_close(embeds[:, :P], wrapper.prompt.detach().expand(4, -1, -1))
    assert mask[:, :P].eq(1).all()
    assert torch.equal(mask[:, P:], (batch["source_ids"] != 0).long())
    wrapper.seq_len = 20
    embeds, mask = wrapper.encoder_inputs(batch["source_ids"], wrapper.projected_prompt())
    assert embeds.shape[1] == 20 and mask.shape[1] == 20


def test_dynamic_padding_gives_the_loss_of_padding_to_seq_len(written_t5_tokenizer, fixture_data_dir):
    wrapper = make_wrapper("MLP1")
    split = cb_split(written_t5_tokenizer, fixture_data_dir, n=16)
    for dyn, full in zip(tu.make_batches(split, 8, 5), tu.make_batches(split, 8, 5, pad_to=512)):
        assert dyn["source_ids"].shape[1] < 512 == full["source_ids"].shape[1]
        prompt = wrapper.projected_prompt()
        a, b = wrapper.loss(dyn, prompt).item(), wrapper.loss(full, prompt).item()
        assert a == pytest.approx(b, rel=1e-5)
    # and generation agrees
    dyn, full = next(tu.make_batches(split, 8, 5)), next(tu.make_batches(split, 8, 5, pad_to=512))
    prompt = wrapper.projected_prompt()
    assert torch.equal(wrapper.generate(dyn["source_ids"], 5, prompt), wrapper.generate(full["source_ids"], 5, prompt))


def test_full_finetuning_trains_the_model(written_t5_tokenizer, fixture_data_dir):
    model = tiny_model()
    assert models.freeze_model(model, False, "xxxxxxx") == sum(p.numel() for p in model.parameters())
    wrapper = models.PromptT5(model, None, None)
    assert wrapper.projected_prompt() is None
    split = cb_split(written_t5_tokenizer, fixture_data_dir, n=4)
    opt = tu.build_optimizer("legacy_adamw", wrapper, lr=3e-4)
    before = model.shared.weight.detach().clone()
    wrapper.loss(next(tu.make_batches(split, 4, 5))).backward()
    opt.step()
    assert not torch.equal(before, model.shared.weight)


def test_freeze_except_keeps_matching_parameters_trainable():
    model = tiny_model()
    n = models.freeze_model(model, True, "shared")
    assert n == model.shared.weight.numel()
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["shared.weight"]


def test_evaluate_restores_modes_and_scores(written_t5_tokenizer, fixture_data_dir):
    wrapper = make_wrapper("MLP1", tokenizer=written_t5_tokenizer)
    wrapper.train()
    split = cb_split(written_t5_tokenizer, fixture_data_dir, n=10)
    task = data_utils.get_task("cb")
    res = tu.evaluate(wrapper, split, task, batch_size=4)
    assert wrapper.training and wrapper.model.training and wrapper.reparam.training
    assert len(res["predictions"]) == 10 and math.isfinite(res["loss"])
    assert len(res["metric"]) == 2 and res["score"] == pytest.approx(np.mean(res["metric"]))
    # batch size does not change predictions
    res8 = tu.evaluate(wrapper, split, task, batch_size=8, loss_batch_size=4)
    assert res8["predictions"] == res["predictions"]
    assert res8["loss"] == pytest.approx(res["loss"], rel=1e-5)  # the loss keeps the batches of 4 it reports
    # ... and it is the mean of the per-batch mean token losses, as the original computed it
    batches = list(tu.make_batches(split, 4, 5))
    with torch.no_grad():
        wrapper.eval()
        means = [wrapper.loss(b, wrapper.projected_prompt()).item() for b in batches]
        wrapper.train()
    assert res["loss"] == pytest.approx(np.mean(means), rel=1e-5)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_fit_keeps_the_evaluations_of_the_state_it_returns(written_t5_tokenizer, fixture_data_dir, early_stopping):
    """train.py writes predictions_val/test.jsonl (and the test score) from fit's own evaluation of the best state
    instead of evaluating it again: they must be what evaluating the returned state gives."""
    wrapper = make_wrapper("MLP1", tokenizer=written_t5_tokenizer)
    task = data_utils.get_task("cb")
    train, val = cb_split(written_t5_tokenizer, fixture_data_dir, n=8), cb_split(written_t5_tokenizer, fixture_data_dir, n=12)
    test = cb_split(written_t5_tokenizer, fixture_data_dir, n=6)
    cfg = tu.FitConfig(task=task, epochs=3, batch_size=4, early_stopping=early_stopping, model_dropout=False,
                       test_every_eval=True, progress=False)
    state = tu.TrainState()
    history, best = tu.fit(wrapper, tu.build_optimizer("legacy_adamw", wrapper, lr=0.3), train, val, cfg,
                           state=state, test=test)
    kept = state.best_eval
    assert kept["epoch"] == history.best_epoch and (early_stopping or kept["epoch"] == 2)
    assert len({e["loss"] for e in history.evals}) == 3  # the states differ, so the kept evaluation is a choice
    wrapper.load_trainable_state(best)
    for split, res in (("val", kept["val"]), ("test", kept["test"])):
        again = tu.evaluate(wrapper, {"val": val, "test": test}[split], task, batch_size=16, loss_batch_size=4)
        assert res["predictions"] == again["predictions"] and res["score"] == again["score"]
        assert res["loss"] == pytest.approx(again["loss"], rel=1e-6)


def test_fit_keeps_no_evaluation_when_the_final_state_was_not_evaluated(written_t5_tokenizer, fixture_data_dir):
    wrapper = make_wrapper("None", tokenizer=written_t5_tokenizer)
    split = cb_split(written_t5_tokenizer, fixture_data_dir, n=8)
    cfg = tu.FitConfig(task=data_utils.get_task("cb"), epochs=2, batch_size=4, eval_every=2, progress=False)
    state = tu.TrainState()
    tu.fit(wrapper, tu.build_optimizer("legacy_adamw", wrapper, lr=0.3), split, split, cfg, state=state)
    assert state.best_eval is None  # epoch 0 was evaluated, the returned state is epoch 1's: train.py evaluates it

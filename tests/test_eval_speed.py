"""Evaluation does each piece of work once: one encoder pass per row feeds both the generation and the loss
(the wrappers' evaluate_batch), the loss reuses generate's cross-attention keys and values, and batches are sized
by tokens (few decoder batches; the encoder on chunks of them with little padding). Same numbers as the two-pass
path (decode, then token_losses, each running the encoder): identical predictions, losses within 1e-6 relative.

Runs anywhere: tiny random models, the CB rows and the tokenizer written in tests/fixtures (no ../shared).
Speed itself is measured by scripts/benchmark.py --eval_compare (docs/PERFORMANCE.md), never asserted here.
"""
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, T5Config, T5ForConditionalGeneration

import data_utils
from residual_prompts import models
import train_utils as tu
from residual_prompts.prompts import SoftPrompt
from res_mlp import build_reparam


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models run faster on one thread


@pytest.fixture(autouse=True)
def small_chunk_cost(monkeypatch):
    """The fixture rows are 4 to 30 tokens long: at the CPU's cost of an encoder pass (256 tokens) no chunk would
    pay off; at 1 evaluation cuts its batches into chunks, which the tests then cover."""
    monkeypatch.setitem(tu.EVAL_BATCH_COST, "cpu", 1)


@pytest.fixture(scope="module")
def cb(written_t5_tokenizer, fixture_data_dir):
    """The 30 fixture CB rows (train + validation), encoded for T5, cut to lengths 4 to 30 (+ </s>) so that batches
    by tokens differ from batches by rows."""
    task = data_utils.get_task("cb")
    rows = [r for s in ("train", "validation") for r in data_utils.load_split(task, s, str(fixture_data_dir))]
    split = models.PromptT5.encode_split(task, rows, written_t5_tokenizer, 512)
    split.source_ids = [ids[:3 + (i * 7) % 27] + [1] for i, ids in enumerate(split.source_ids)]
    return task, split


def tiny_t5(tokenizer, precision="fp32", seed=1, scale=20.0):
    """A 1+1-layer T5 of width 16 on the written vocabulary with a Residual PT prompt (MLP1). The prompt is scaled
    far from the vocabulary so that the predictions differ between rows."""
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1,
                   num_heads=4, dropout_rate=0.1, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = T5ForConditionalGeneration(cfg)
    models.freeze_model(model, True, "xxxxxxx")
    prompt = torch.randn(4, 16) * scale
    wrapper = models.PromptT5(model, tokenizer, SoftPrompt(prompt, build_reparam("MLP1", 16, 4, bottleneck=8)), 512,
                              precision)
    return wrapper.eval()


def two_pass(wrapper, batch, prompt, max_length):
    """Before: decode and token_losses, each with its own encoder pass."""
    dec, tgt = wrapper.decode(batch, prompt, max_length)
    return (dec, tgt, *wrapper.token_losses(batch, prompt))


def batches_of(split, task, batch_size):
    """evaluate's batches on a CPU: (tensors, rows, encoder chunks)."""
    return [({k: v for k, v in b.items() if k not in ("rows", "encoder_chunks")}, b["rows"], b["encoder_chunks"])
            for b in tu.token_batches(split, batch_size, task.target_len, batch_cost=tu.EVAL_BATCH_COST["cpu"])]


def assert_same(one, two, rel=1e-6):
    assert one[0] == two[0] and one[1] == two[1]  # predictions and targets: identical strings
    assert torch.equal(one[3], two[3])  # token counts
    np.testing.assert_allclose(one[2].double().numpy(), two[2].double().numpy(), rtol=rel, atol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_t5_evaluate_batch_equals_decode_plus_token_losses(written_t5_tokenizer, cb, precision):
    """On each of evaluate's batches: the one-pass path, with the encoder on the batch's chunks and on the whole
    batch, against decode + token_losses on the whole batch."""
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer, precision)
    prompt = wrapper.projected_prompt()
    preds, chunked = [], 0
    with torch.no_grad():
        for batch, _, chunks in batches_of(split, task, 4):
            two = two_pass(wrapper, batch, prompt, task.target_len)
            whole = wrapper.evaluate_batch(batch, prompt, task.target_len)
            assert whole[:2] == two[:2] and torch.equal(whole[2], two[2])  # the same calls: bit for bit
            # chunks pad less, so products of other shapes: float noise, at bf16's precision with bf16 weights
            assert_same(wrapper.evaluate_batch(batch, prompt, task.target_len, chunks=chunks), two,
                        rel=1e-6 if precision == "fp32" else 1e-2)
            preds += whole[0]
            chunked += bool(chunks)
    assert len(set(preds)) > 2 and chunked  # not constant predictions; chunks were tried


def test_t5_evaluate_batch_without_a_prompt(written_t5_tokenizer, cb):
    """Full fine-tuning has no prompt: the encoder reads input_ids; the one-pass path must do the same."""
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer)
    with torch.no_grad():
        for batch, _, chunks in batches_of(split, task, 8)[:2]:
            assert_same(wrapper.evaluate_batch(batch, None, task.target_len, chunks=chunks),
                        two_pass(wrapper, batch, None, task.target_len))


def test_chunks_pad_less_than_their_batch(written_t5_tokenizer, cb):
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer)
    batch, _, chunks = next(b for b in batches_of(split, task, 4) if b[2])
    widths = []
    handle = wrapper.model.get_encoder().register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["inputs_embeds"].shape[:2]), with_kwargs=True)
    try:
        encoded, mask = wrapper.encode(batch["source_ids"], wrapper.projected_prompt(), chunks)
    finally:
        handle.remove()
    P = wrapper.prompt_len
    assert widths == [(rows, length + P) for rows, length in chunks]  # each chunk cut to its own longest row
    assert encoded.last_hidden_state.shape[:2] == mask.shape == (batch["source_ids"].shape[0],
                                                                 batch["source_ids"].shape[1] + P)
    lengths = (batch["source_ids"] != 0).sum(1) + P
    assert torch.equal(mask.sum(1), lengths)  # the chunks' padding is masked like the batch's own


def test_evaluation_runs_the_encoder_once_per_chunk(written_t5_tokenizer, cb):
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer)
    calls = []
    handle = wrapper.model.get_encoder().register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        tu.evaluate(wrapper, split, task, batch_size=4, loss_batch_size=8)
    finally:
        handle.remove()
    batches = batches_of(split, task, 4)
    assert len(calls) == sum(len(chunks or [1]) for _, _, chunks in batches) and len(batches) > 1


def test_the_loss_reuses_generates_cross_attention_keys_and_values(written_t5_tokenizer, cb):
    """The decoder's cross-attention keys and values (one [B, T', H] product each per layer) are computed once per
    batch, by generate, and the loss reads them from its cache: same numbers (test above), less work."""
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer)
    key_projection = wrapper.model.get_decoder().block[0].layer[1].EncDecAttention.k
    calls = []
    handle = key_projection.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    prompt = wrapper.projected_prompt()
    batch, _, chunks = batches_of(split, task, 4)[0]
    try:
        with torch.no_grad():
            wrapper.evaluate_batch(batch, prompt, task.target_len, chunks=chunks)
            one_pass = list(calls)
            calls.clear()
            two_pass(wrapper, batch, prompt, task.target_len)
    finally:
        handle.remove()
    assert len(one_pass) == 1 and len(calls) == 2  # per batch: once (generate's first step) instead of twice


def reference_evaluate(wrapper, split, task, batches, loss_batch_size):
    """The two-pass evaluation on the given batches: predictions in the split's order and the reported loss."""
    n = len(split)
    decoded, targets = [None] * n, [None] * n
    sums, counts = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    prompt = wrapper.projected_prompt()
    with torch.no_grad():
        for batch, rows in batches:
            dec, tgt, s, c = two_pass(wrapper, batch, prompt, task.target_len)
            for i, d, t in zip(rows, dec, tgt):
                decoded[i], targets[i] = d, t
            sums[rows], counts[rows] = s.double(), c.double()
    return decoded, tu.mean_of_batch_means(sums, counts, loss_batch_size)


def test_evaluate_equals_the_two_pass_path(written_t5_tokenizer, cb):
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer)
    res = tu.evaluate(wrapper, split, task, batch_size=4, loss_batch_size=8)
    decoded, loss = reference_evaluate(wrapper, split, task, [b[:2] for b in batches_of(split, task, 4)], 8)
    assert res["predictions"] == decoded
    assert res["loss"] == pytest.approx(loss, rel=1e-6)
    # and the previous batching (batches of 4 rows, longest first)
    order = sorted(range(len(split)), key=lambda i: -len(split.source_ids[i]))
    by_rows = [({k: v for k, v in b.items() if k != "rows"}, b["rows"])
               for b in tu.make_batches(split, 4, task.target_len, None, order)]
    decoded_rows, loss_rows = reference_evaluate(wrapper, split, task, by_rows, 8)
    assert res["predictions"] == decoded_rows
    assert res["loss"] == pytest.approx(loss_rows, rel=1e-6)


def test_the_loss_keeps_its_batches_whatever_the_evaluation_batches(written_t5_tokenizer, cb):
    """The reported loss is the mean over consecutive loss_batch_size rows, in the split's order, of each batch's
    mean token loss, for any evaluation batch size (so any token budget)."""
    task, split = cb
    wrapper = tiny_t5(written_t5_tokenizer)
    with torch.no_grad():
        means = [wrapper.loss({k: v for k, v in b.items() if k != "rows"}, wrapper.projected_prompt()).item()
                 for b in tu.make_batches(split, 8, task.target_len)]
    results = [tu.evaluate(wrapper, split, task, batch_size=bs, loss_batch_size=8) for bs in (1, 3, 64)]
    for res in results:
        assert res["predictions"] == results[0]["predictions"]
        assert res["loss"] == pytest.approx(np.mean(means), rel=1e-6)


def test_token_batches_hold_every_row_once_within_the_budget(written_t5_tokenizer, cb):
    task, split = cb
    lengths = [len(s) for s in split.source_ids]
    for batch_size in (1, 2, 4, 8, 64):
        for cost in (0, 8, 256, None):
            batches = list(tu.token_batches(split, batch_size, task.target_len, batch_cost=cost))
            rows = [i for b in batches for i in b["rows"]]
            assert sorted(rows) == list(range(len(split)))  # every row, once
            assert [lengths[i] for i in rows] == sorted(lengths, reverse=True)  # longest first
            budget = batch_size * max(lengths)
            for b in batches:
                n, t = b["source_ids"].shape
                assert t == max(lengths[i] for i in b["rows"])  # padded to its longest row
                assert n * t <= budget and n <= 4 * batch_size
                assert b["target_ids"].shape == (n, task.target_len)
                chunks = b["encoder_chunks"] or [(n, t)]
                assert sum(r for r, _ in chunks) == n
                starts = np.cumsum([0] + [r for r, _ in chunks])[:-1]
                assert [length for _, length in chunks] == [lengths[b["rows"][a]] for a in starts]


def encoder_tokens(batches):
    return sum(sum(r * length for r, length in (b["encoder_chunks"] or [tuple(b["source_ids"].shape)]))
               for b in batches)


def test_token_batches_trade_padding_against_the_number_of_encoder_passes(written_t5_tokenizer, cb):
    task, split = cb
    lengths = sorted((len(s) for s in split.source_ids), reverse=True)
    free = list(tu.token_batches(split, 4, task.target_len, batch_cost=0))
    assert encoder_tokens(free) == sum(lengths)  # encoder passes cost nothing: no padding at all
    fewest = list(tu.token_batches(split, 4, task.target_len, batch_cost=None))
    assert all(b["encoder_chunks"] is None for b in fewest)
    greedy, start = 0, 0  # the fewest batches: fill each as far as the bounds allow
    while start < len(lengths):
        start += min(4 * 4, max(1, 4 * lengths[0] // lengths[start]), len(lengths) - start)
        greedy += 1
    assert len(fewest) == greedy < len(split) / 4  # short rows: larger batches than batch_size rows
    middle = list(tu.token_batches(split, 4, task.target_len, batch_cost=8))

    def passes(batches):
        return sum(len(b["encoder_chunks"] or [1]) for b in batches)

    assert passes(fewest) <= passes(middle) <= passes(free)
    assert encoder_tokens(free) <= encoder_tokens(middle) <= encoder_tokens(fewest)
    assert len(middle) <= len(split) / 4  # few decoder batches whatever the chunks
    by_rows = list(tu.make_batches(split, 4, task.target_len, None, sorted(range(len(split)),
                                                                            key=lambda i: -len(split.source_ids[i]))))
    assert encoder_tokens(middle) + 8 * passes(middle) <= sum(b["source_ids"].numel() + 8 for b in by_rows)
    fixed = list(tu.token_batches(split, 4, task.target_len, pad_to=512))  # --pad_to_max_length: rows, as before
    assert [tuple(b["source_ids"].shape) for b in fixed] == [(4, 512)] * 7 + [(2, 512)]


# ---- the encoder wrapper: one predict() feeds both --------------------------------------------------------------
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz", "good", "bad", "the"]


@pytest.mark.parametrize("regression", [False, True])
def test_encoder_evaluate_batch_equals_decode_plus_token_losses(tmp_path, regression):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64, initializer_range=0.2),
                      add_pooling_layer=False)
    labels = () if regression else ("negative", "positive")
    wrapper = models.PromptedEncoderClassifier(model, tok, labels, SoftPrompt(torch.randn(3, 16)), seq_len=64).eval()
    rng = np.random.RandomState(0)
    sources = [tok(" ".join(rng.choice(["good", "bad", "the", "a b"], size=rng.randint(1, 8))))["input_ids"]
               for _ in range(12)]
    targets = [[float(rng.uniform(0, 5))] if regression else [int(rng.randint(2))] for _ in range(12)]
    split = models.EncodedSplit(sources, targets, pad_id=tok.pad_token_id)
    task = data_utils.get_task("stsb" if regression else "sst2")
    prompt = wrapper.projected_prompt()
    with torch.no_grad():
        for batch, _, chunks in batches_of(split, task, 4):
            two = (*wrapper.decode(batch, prompt), *wrapper.token_losses(batch, prompt))
            one = wrapper.evaluate_batch(batch, prompt, task.target_len)
            assert one[:2] == two[:2] and torch.equal(one[2], two[2])  # the same predict(): bit for bit
            assert_same(wrapper.evaluate_batch(batch, prompt, task.target_len, chunks=chunks), two)
    res = tu.evaluate(wrapper, split, task, batch_size=4, loss_batch_size=4)
    assert len(res["predictions"]) == 12 and np.isfinite(res["loss"])

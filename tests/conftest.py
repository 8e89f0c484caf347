"""Shared fixtures and the one helper that starts a Python child process.

Two kinds of test data:
- written for the tests and committed in tests/, so the tests that use them run anywhere: 20 training and 10
  validation CB rows in the official SuperGLUE layout (``fixture_data_dir``), a T5 tokenizer whose vocabulary is
  listed here (``written_t5_tokenizer``), and a random tiny T5 with that tokenizer (``tiny_t5_anywhere``);
- the real benchmark data and the original's golden outputs, which live outside the project in ``../shared`` (they
  may not be committed). Where that folder is absent (a clone elsewhere) the tests that need it skip, they never
  fail. ``RPT_SHARED=DIR`` points the tests at another copy; ``RPT_SHARED=/nonexistent`` runs them as such a clone.

Subprocess, fault and distributed tests carry the ``slow`` marker: ``python -m pytest -q -m "not slow" tests`` is
the quick run, ``python -m pytest -q tests`` runs everything."""
import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RPT_SHARED") or ROOT.parent / "shared")
FIXTURE_DATA = ROOT / "tests" / "fixtures" / "data"

# The project modules are plain files at the root, not a package: make them importable however pytest is called.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Under pytest-xdist (pytest.ini runs the suite on several worker processes) each worker and every child process it
# starts computes on one thread: workers side by side on the machine's cores, none waiting for another's threads.
# Set before anything imports torch; the children inherit it through os.environ.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
# Tests never touch the network: anything that would reach the Hugging Face Hub fails fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def run_py(args, cwd=ROOT, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``python ARGS`` (this interpreter) in a child process, as tests start train.py, torchrun
    (``-m torch.distributed.run``), scripts/*.py and tests/fault_runner.py. ``env``: variables set on top of
    os.environ. Output is captured as text. The timeout is generous on purpose: on a loaded 2-core machine a child
    gets a fraction of a core, and a timeout should only ever mean a hang. A train.py run gets --save_adapter 0
    unless it names --save_adapter or --push_to_hub itself."""
    args = [str(a) for a in args]
    if any(a.endswith("train.py") for a in args[:4]) and "--save_adapter" not in args and "--push_to_hub" not in args:
        # Importing peft costs seconds per child process; the runs that are about the adapter say so explicitly
        # (tests/test_run_adapter.py runs the default, auto).
        args += ["--save_adapter", "0"]
    return subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def trainer_losses(model, batches, collate, out_dir, lr=0.3):
    """The losses of transformers.Trainer running ``model`` (a PromptedModel) one step per batch, in order, with
    AdamW over ``model.param_groups(lr)`` (eps 1e-8, weight decay 1e-5: train.py's torch_adamw), a constant lr and no
    clipping: what the API's Trainer tests compare with train_utils.train_step. ``collate(batch)`` -> the model's
    keyword inputs."""
    import torch
    from transformers import Trainer, TrainingArguments

    seen = []
    hook = model.register_forward_hook(lambda m, i, out: seen.append(float(out.loss.detach())))

    class Fixed(torch.utils.data.IterableDataset):  # the same batches in the same order, one element each
        def __iter__(self):
            return iter(range(len(batches)))

    args = TrainingArguments(output_dir=str(out_dir), max_steps=len(batches), per_device_train_batch_size=1,
                             learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=0.0, save_strategy="no",
                             report_to="none", disable_tqdm=True, use_cpu=True, remove_unused_columns=False)
    optimizer = torch.optim.AdamW(model.param_groups(lr), lr=lr, eps=1e-8, weight_decay=1e-5)
    try:
        Trainer(model=model, args=args, train_dataset=Fixed(), data_collator=lambda i: collate(batches[i[0]]),
                optimizers=(optimizer, None)).train()
    finally:
        hook.remove()
    return seen


# ---- data and models written for the tests (no ../shared) ----------------------------------------------------
# A T5 vocabulary in the real one's layout: <pad> 0, </s> 1, <unk> 2, pieces, then <extra_id_99> .. <extra_id_0>.
# The CB label words are cut into pieces (2 + 2 + 1) so that class-label initialization averages several rows.
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]
LABEL_PIECES = ["▁entail", "ment", "▁contra", "diction", "▁neutral"]
FIELD_PIECES = ["▁premise", "▁hypothesis"]  # the CB formatter writes "premise: ... hypothesis: ..."
FALLBACK_PIECES = ["▁", *string.ascii_letters, *string.digits, *string.punctuation]  # any ASCII text: no <unk>


def written_t5_vocab() -> list:
    """(piece, score) pairs for T5Tokenizer(vocab=...): the pieces above plus one "▁word" piece per word of the
    fixture's sentences. Whole pieces score higher than their characters, so a listed word is one piece."""
    words = set()
    for path in sorted((FIXTURE_DATA / "super_glue" / "CB").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            words.update(re.findall(r"[A-Za-z0-9']+", row["premise"] + " " + row["hypothesis"]))
    pieces = LABEL_PIECES + FIELD_PIECES + sorted({"▁" + w for w in words} - set(LABEL_PIECES + FIELD_PIECES))
    return ([(p, 0.0) for p in T5_SPECIALS] + [(p, -5.0) for p in pieces] + [(p, -10.0) for p in FALLBACK_PIECES]
            + [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))])


@pytest.fixture(scope="session")
def fixture_data_dir() -> Path:
    """A --data_dir with ``super_glue/CB/{train,val}.jsonl``: 20 + 10 rows in the official layout (premise,
    hypothesis, label word, idx), sentences written for the tests. CB-like data, not CB: no real counts."""
    return FIXTURE_DATA


@pytest.fixture(scope="session")
def written_t5_tokenizer():
    """A T5 tokenizer (transformers 5 ``T5Tokenizer``: pad 0, eos 1, unk 2, 100 extra ids) on the vocabulary written
    above: every word of the fixture rows and the CB label words tokenize without <unk>."""
    from transformers import T5Tokenizer
    return T5Tokenizer(vocab=written_t5_vocab(), model_max_length=512)


def _make_tiny_t5(vocab_dir, out) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_t5", ROOT / "scripts" / "make_tiny_t5.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(out), "--vocab_dir", str(vocab_dir)])
    return out


@pytest.fixture(scope="session")
def tiny_t5_anywhere(written_t5_tokenizer, tmp_path_factory) -> Path:
    """scripts/make_tiny_t5.py's random tiny T5 (d_model 32, 32,128 embedding rows, dropout 0.1) with the written
    tokenizer: the real tiny model's shapes, without ../shared. Rows past the tokenizer's ids decode to nothing."""
    vocab_dir = tmp_path_factory.mktemp("written_t5_vocab")
    written_t5_tokenizer.save_pretrained(vocab_dir)
    return _make_tiny_t5(vocab_dir, tmp_path_factory.mktemp("tiny_t5_anywhere"))


# ---- ../shared: real data, real vocabulary, golden outputs -------------------------------------------------------
def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.is_dir():
        pytest.skip(f"{path} not found: it holds the real benchmark data and the original's golden outputs, "
                    f"which exist only in this workplace (../shared next to the project)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: shared data and golden files exist only in this workplace")
    return SHARED


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Official GLUE/SuperGLUE downloads: ``glue/<Task>/*.tsv``, ``super_glue/<Task>/*.jsonl``, ``t5_vocab/``."""
    return _shared("data")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Outputs recorded by running the original implementation (see its README.md)."""
    return _shared("golden")


@pytest.fixture(scope="session")
def t5_tokenizer(golden_dir):
    """The real T5 vocabulary (transformers 5 ``T5Tokenizer``), loaded offline from the golden tiny model."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(golden_dir / "model"))


@pytest.fixture(scope="session")
def tiny_t5_dir(data_dir, tmp_path_factory) -> Path:
    """A random tiny T5 (d_model 32, dropout 0.1) with the real tokenizer, written by scripts/make_tiny_t5.py."""
    return _make_tiny_t5(data_dir / "t5_vocab", tmp_path_factory.mktemp("tiny_t5"))


@pytest.fixture(scope="module")
def sweep():
    """scripts/sweep.py loaded as a module, a fresh copy per test module (tests patch its attributes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one thread than on two busy cores (thread synchronization dominates)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

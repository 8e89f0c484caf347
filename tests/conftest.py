"""Shared fixtures. The benchmark data and golden files live outside the project, in ``../shared`` (they may not be
committed); where that folder is absent (a clone elsewhere) the tests that need it skip, they never fail."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# The project modules are plain files at the root, not a package: make them importable however pytest is called.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Tests never touch the network: anything that would reach the Hugging Face Hub fails fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


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
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny_t5", ROOT / "scripts" / "make_tiny_t5.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("tiny_t5")
    module.main([str(out), "--vocab_dir", str(data_dir / "t5_vocab")])
    return out

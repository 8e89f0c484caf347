"""Every T5 prompt run writes its PEFT adapter into RUN/adapter/ (--save_adapter auto, when peft is installed), and
--push_to_hub REPO uploads it. The Hub cannot be reached here: the refusals before training and a failed upload
(an unreachable endpoint) are tested; the upload itself is huggingface_hub's."""
import json
import os

import pytest
import torch

from conftest import run_py

pytest.importorskip("peft")
pytestmark = [pytest.mark.slow,  # train.py in child processes
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]


def _train(model, data, save_dir, *extra, env=None, name="r"):
    args = ["train.py", "--task", "cb", "--data_dir", str(data), "--model_name", str(model), "--freeze_weights", "1",
            "--prefix_MLP", "MLP1", "--num_epochs", "1", "--batch_size", "8", "--prefix_len", "4",
            "--save_dir", str(save_dir), "--save_name", name, *map(str, extra)]
    if "--save_adapter" not in args and "--push_to_hub" not in args:
        args += ["--save_adapter", "auto"]  # the default, said explicitly (run_py turns it off otherwise)
    return run_py(args, env={"PYTHONWARNINGS": "ignore", **(env or {})})


def test_a_t5_run_folder_holds_its_adapter_and_peft_loads_it(tiny_t5_anywhere, fixture_data_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import T5ForConditionalGeneration

    proc = _train(tiny_t5_anywhere, fixture_data_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "r"
    adapter = run / "adapter"
    assert f"adapter: {adapter}" in proc.stdout
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 4
    assert config["base_model_name_or_path"] == str(tiny_t5_anywhere)
    prompt = torch.load(run / "checkpoint.pt", weights_only=True)["projected_prompt"]
    assert torch.equal(load_file(adapter / "adapter_model.safetensors")["prompt_embeddings"], prompt)
    model = PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(tiny_t5_anywhere), adapter)
    assert torch.equal(model.get_prompt(batch_size=1)[0], prompt)
    assert "Scores" in (adapter / "README.md").read_text()

    # --save_adapter 0: none; and a fresh start (--overwrite 1) removes the earlier one
    proc = _train(tiny_t5_anywhere, fixture_data_dir, tmp_path, "--save_adapter", "0", "--overwrite", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not adapter.exists() and "adapter:" not in proc.stdout
    # --save_adapter 1 on the complete run writes it without training again
    before = (run / "results.json").stat().st_mtime_ns
    proc = _train(tiny_t5_anywhere, fixture_data_dir, tmp_path, "--save_adapter", "1")
    assert proc.returncode == 0 and "already complete" in proc.stdout and (adapter / "adapter_config.json").is_file()
    assert (run / "results.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("extra, env, message", [
    (["--push_to_hub", "me/cb-prompt"], {"HF_HUB_OFFLINE": "1"}, "needs the Hub, but HF_HUB_OFFLINE is set"),
    (["--push_to_hub", "me/cb-prompt"], {"HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}, "no Hub token"),
    (["--push_to_hub", "a/b/c"], {"HF_HUB_OFFLINE": "0"}, "is not a Hub repository name"),
    (["--push_to_hub", "me/x", "--save_adapter", "0"], {}, "which --save_adapter 0 turns off"),
])
def test_push_to_hub_that_cannot_work_is_refused_before_training(tiny_t5_anywhere, fixture_data_dir, tmp_path,
                                                                   extra, env, message):
    env = {"HF_HOME": str(tmp_path / "hf_home"), **env}  # no stored token
    proc = _train(tiny_t5_anywhere, fixture_data_dir, tmp_path, *extra, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_failed_upload_keeps_the_complete_run_and_a_rerun_retries_only_the_push(tiny_t5_anywhere,
                                                                                  fixture_data_dir, tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test_token_not_real", "HF_HOME": str(tmp_path / "hf_home"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9: the connection is refused at once
    proc = _train(tiny_t5_anywhere, fixture_data_dir, tmp_path, "--push_to_hub", "me/cb-prompt", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "push of" in errors[0] and "me/cb-prompt failed" in errors[0]
    assert "run the same command again" in errors[0] and "Traceback" not in proc.stderr
    run = tmp_path / "r"
    assert json.loads((run / "results.json").read_text())["complete"] is True
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    before = (run / "results.json").stat().st_mtime_ns
    proc = _train(tiny_t5_anywhere, fixture_data_dir, tmp_path, "--push_to_hub", "me/cb-prompt", env=env)
    assert proc.returncode == 1 and "already complete" in proc.stdout and "push of" in proc.stderr
    assert (run / "results.json").stat().st_mtime_ns == before

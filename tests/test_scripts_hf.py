"""The scripts around a run, as a Hugging Face workflow uses them: make_table prints unless asked to write,
score_vs_lr.png is ticked at the rates tried and says what its band is, an exported PEFT adapter loads from any
folder and carries a real model card, and scripts/get_data.py lays out the official files (offline: one-line
refusal; its writer checked on in-memory Hub datasets for every task)."""
import importlib.util
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import run_py

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_hf", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_table = load_script("make_table")
plot_curves = load_script("plot_curves")
get_data = load_script("get_data")

ARGS = {"task": "cb", "prefix_len": 10, "prefix_MLP": "MLP1", "residual": 1, "freeze_weights": 1,
        "freeze_except": "xxxxxxx", "lr": 0.3, "seed": 0, "data_seed": 0, "model_name": "t5-base", "num_epochs": 1}


def write_run(root, name, best, **args):
    run = Path(root) / name
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({**ARGS, "save_name": name, **args}))
    (run / "results.json").write_text(json.dumps({
        "task": args.get("task", "cb"), "complete": True, "best_epoch": 0, "best_val_score": best,
        "validation": [{"epoch": 0, "score": best, "metric": [best], "official": {"acc": best}, "loss": 1 - best}]}))
    return run


# ---- make_table: stdout unless --out ---------------------------------------------------------------------------
def test_make_table_without_out_prints_and_writes_nothing(tmp_path, monkeypatch, capsys):
    for seed, best in ((0, 0.5), (1, 0.7)):
        write_run(tmp_path / "runs", f"s{seed}", best, seed=seed)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert make_table.main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr()
    assert "| Residual PT (MLP1) | 60.0 ± 14.1 | 60.0 |" in out.out.splitlines()
    assert "wrote" not in out.err
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "runs"]

    assert make_table.main([str(tmp_path / "runs"), "--out", "tables/t"]) == 0  # --out: the files, and only then
    assert sorted(p.name for p in (cwd / "tables").iterdir()) == ["t.csv", "t.tex"]
    assert "wrote tables/t.csv and tables/t.tex" in capsys.readouterr().err


# ---- plot_curves: score_vs_lr.png ticks and band --------------------------------------------------------------
def lr_runs(root, rates, seeds=(0, 1, 2)):
    for lr in rates:
        for seed in seeds:
            write_run(root, f"lr{lr}_s{seed}", 0.5 + 0.1 * seed + lr / 100, lr=lr, seed=seed)
    runs, _ = plot_curves.run_files.find_runs([root])
    df, _ = plot_curves.lr_frame(runs, "best_val", [])
    return df


@pytest.mark.parametrize("rates, labels", [
    ([0.1, 0.2, 0.3, 0.5], ["0.1", "0.2", "0.3", "0.5"]),       # less than a decade: no 2x10^-1, 3x10^-1 minors
    ([0.3, 1.0], ["0.3", "1"]),
    ([0.001, 0.01, 0.1, 0.3, 1.0, 10.0], ["0.001", "0.01", "0.1", "0.3", "1", "10"]),  # lr_robustness.yaml
])
def test_lr_plot_is_ticked_at_the_rates_tried(tmp_path, rates, labels):
    df = lr_runs(tmp_path / "runs", rates)
    fig, _ = plot_curves.lr_figure(df, ["cb"], "best_val")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert list(ax.get_xticks()) == pytest.approx(rates)
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert list(ax.xaxis.get_minorticklocs()) == []  # no minor ticks, so no minor labels to overlap
    boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))
    title = fig.legends[0].get_title().get_text()
    assert "mean over 3 seeds" in title and "± sample std" in title
    plot_curves.plt.close(fig)


def test_band_title_names_the_seed_counts(tmp_path):
    import pandas as pd

    assert plot_curves._band_title(pd.Series([3, 3])) == ("line: mean over 3 seeds (seed, data_seed)\n"
                                                          "band: ± sample std (ddof=1)")
    assert "2–3 seeds" in plot_curves._band_title(pd.Series([2, 3]))
    assert "(one seed: no band)" in plot_curves._band_title(pd.Series([1, 3]))
    assert plot_curves._band_title(pd.Series([1, 1])) == "one seed per line: no band"


def test_val_curves_legend_says_what_the_band_is(tmp_path):
    lr_runs(tmp_path / "runs", [0.3], seeds=(0, 1))
    runs, _ = plot_curves.run_files.find_runs([tmp_path / "runs"])
    fig, stats = plot_curves.curves_figure(plot_curves.curves_frame(runs, []), ["cb"])
    assert fig.legends[0].get_title().get_text() == ("line: mean over 2 seeds (seed, data_seed)\n"
                                                     "band: ± sample std (ddof=1)")
    assert stats["n"].tolist() == [2]
    plot_curves.plt.close(fig)


# ---- export_peft: an adapter that loads anywhere, with a model card ----------------------------------------------
@pytest.fixture(scope="module")
def relative_run(tiny_t5_anywhere, fixture_data_dir, tmp_path_factory):
    """A CB run trained from a folder where the model is ./tiny_t5: args.json records model_name "tiny_t5"."""
    pytest.importorskip("peft")
    work = tmp_path_factory.mktemp("work")
    os.symlink(tiny_t5_anywhere, work / "tiny_t5")
    proc = run_py([ROOT / "train.py", "--task", "cb", "--data_dir", fixture_data_dir, "--model_name", "tiny_t5",
                   "--prefix_MLP", "MLP1", "--freeze_weights", "1", "--early_stopping", "1", "--get_test_subset", "1",
                   "--num_epochs", "2", "--batch_size", "4", "--seq_len", "64", "--save_dir", work / "runs",
                   "--save_name", "cb_res", "--device", "cpu", "--progress", "0"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = work / "runs" / "cb_res"
    assert json.loads((run / "args.json").read_text())["model_name"] == "tiny_t5"
    return work, run


@pytest.fixture(scope="module")
def exported(relative_run):
    work, run = relative_run
    proc = run_py([ROOT / "scripts" / "export_peft.py", run, "adapter"], cwd=work, env={"PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "adapter"


LOAD = """
import sys, torch, numpy as np
from peft import AutoPeftModelForSeq2SeqLM, PeftConfig, PeftModel
from transformers import T5ForConditionalGeneration
adapter, prompt = sys.argv[1], np.load(sys.argv[2])
auto = AutoPeftModelForSeq2SeqLM.from_pretrained(adapter)  # the base model from base_model_name_or_path
base = T5ForConditionalGeneration.from_pretrained(PeftConfig.from_pretrained(adapter).base_model_name_or_path)
model = PeftModel.from_pretrained(base, adapter)
for m in (auto, model):
    assert torch.equal(m.get_prompt(batch_size=1)[0], torch.from_numpy(prompt))
print("loaded", type(auto).__name__)
"""


@pytest.mark.slow
def test_adapter_records_an_absolute_base_and_loads_from_another_folder(exported, relative_run, tmp_path):
    work, run = relative_run
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(work / "tiny_t5")  # absolute, not "tiny_t5"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_py(["-c", LOAD, exported, run / "prompt.npy"], cwd=elsewhere, env={"PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded PeftModelForSeq2SeqLM" in proc.stdout


def card_command(card):
    block = re.search(r"```bash\n(.*?)```", card, re.DOTALL).group(1)
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.slow
def test_model_card_has_scores_command_and_usage(exported, relative_run):
    import arguments
    import run_folder

    _, run = relative_run
    card = (exported / "README.md").read_text()
    results = json.loads((run / "results.json").read_text())
    assert "[More Information Needed]" not in card and "More Information" not in card
    assert card.startswith("---\nlibrary_name: peft\n") and "base_model:" not in card  # local base: not a Hub id
    assert "# Residual PT (MLP1) soft prompt for `cb`" in card and "prompt length 10" in card
    best = f"| validation, best epoch {results['best_epoch']} ({results['n_examples']['validation']} rows) | " \
           f"{100 * results['best_val_score']:.1f} |"
    assert best in card
    assert f"| test subset, best state ({results['n_examples']['test']} rows) | " \
           f"{100 * results['test']['score']:.1f} |" in card
    assert "PeftModel.from_pretrained(base, \"adapter\")" in card and "input_ids[:54]" in card
    words = card_command(card)
    assert words[:2] == ["python", "train.py"]
    parsed = arguments.check_args(arguments.build_parser().parse_args(words[2:]))
    saved = json.loads((run / "args.json").read_text())
    assert run_folder.differing_args(saved, vars(parsed)) == []  # the command gives back the run's arguments
    assert "--prompt_init" not in words and "--eval_batch_size" not in words  # what train.py resolves by itself


@pytest.mark.slow
def test_model_card_of_a_hub_base_names_it(relative_run):
    export_peft = load_script("export_peft")
    _, run = relative_run
    args = json.loads((run / "args.json").read_text())
    card = export_peft.model_card(str(run), args, 10, 32, "t5-base", "cb_res")
    assert "\nbase_model: t5-base\n" in card and "local folder" not in card
    assert 'from_pretrained("t5-base")' in card


def test_resolve_base_keeps_hub_names_and_makes_folders_absolute(tmp_path, monkeypatch):
    export_peft = load_script("export_peft")
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert export_peft.resolve_base("t5-base") == "t5-base"
    assert export_peft.resolve_base("google/t5-v1_1-base") == "google/t5-v1_1-base"
    assert export_peft.resolve_base("m") == str(tmp_path / "m")
    assert export_peft.resolve_base(str(tmp_path / "m")) == str(tmp_path / "m")


# ---- get_data.py ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_get_data_offline_is_one_line_and_exit_2(tmp_path):
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf_home" / "datasets")}
    proc = run_py([ROOT / "scripts" / "get_data.py", tmp_path / "data", "--tasks", "cb"], env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("get_data.py: error: cannot load aps/super_glue/cb")
    assert "HF_DATASETS_OFFLINE" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing written


def test_get_data_refuses_an_unknown_task(tmp_path, capsys):
    assert get_data.main([str(tmp_path / "d"), "--tasks", "cb,cbx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task or group 'cbx'" in err
    assert not (tmp_path / "d").exists()


def f32(x):
    return float(np.float32(x))


# Hub rows as nyu-mll/glue and aps/super_glue serve them (field names, integer class ids, float32 scores, nested
# idx), two or three per split; quotes, tabs-free text and non-ASCII characters included.
S = ['He said "no" to it .', "The café closed; it's late .", "Birds fly , fish swim .", "A b c"]
GLUE_PAIRS = [{"sentence1": S[i], "sentence2": S[(i + 1) % 4], "idx": i} for i in range(3)]
HUB = {
    ("nyu-mll/glue", "cola"): [{"sentence": S[i], "label": i % 2, "idx": i} for i in range(3)],
    ("nyu-mll/glue", "sst2"): [{"sentence": S[i] + " ", "label": (i + 1) % 2, "idx": i} for i in range(3)],
    ("nyu-mll/glue", "mrpc"): [{**p, "label": p["idx"] % 2} for p in GLUE_PAIRS],
    ("nyu-mll/glue", "qqp"): [{"question1": S[i], "question2": S[3 - i], "label": i % 2, "idx": i} for i in range(3)],
    ("nyu-mll/glue", "stsb"): [{**p, "label": f32(v)} for p, v in zip(GLUE_PAIRS, (3.8, 0.0, 4.333))],
    ("nyu-mll/glue", "mnli"): [{"premise": S[i], "hypothesis": S[3 - i], "label": i % 3, "idx": i} for i in range(3)],
    ("nyu-mll/glue", "qnli"): [{"question": S[i], "sentence": S[3 - i], "label": i % 2, "idx": i} for i in range(3)],
    ("nyu-mll/glue", "rte"): [{**p, "label": p["idx"] % 2} for p in GLUE_PAIRS],
    ("nyu-mll/glue", "wnli"): [{**p, "label": (p["idx"] + 1) % 2} for p in GLUE_PAIRS],
    ("aps/super_glue", "boolq"): [{"question": S[i], "passage": S[3 - i], "idx": i, "label": i % 2} for i in range(3)],
    ("aps/super_glue", "cb"): [{"premise": S[i], "hypothesis": S[3 - i], "idx": i, "label": i % 3} for i in range(3)],
    ("aps/super_glue", "copa"): [{"premise": S[i], "choice1": S[1], "choice2": S[2], "question": "effect", "idx": i,
                                  "label": i % 2} for i in range(3)],
    ("aps/super_glue", "multirc"): [
        {"paragraph": S[p], "question": S[q % 4], "answer": f"answer {a}", "label": a % 2,
         "idx": {"paragraph": p, "question": q, "answer": a}}
        for p, q, a in ((0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 3), (1, 2, 4))],
    ("aps/super_glue", "record"): [
        {"passage": "@highlight Ann met Bob in Paris . Bob left .", "query": "@placeholder met Bob",
         "entities": ["Bob", "Ann", "Paris"], "answers": ["Ann"], "idx": {"passage": 0, "query": 0},
         "entity_spans": {"text": ["Ann", "Bob", "Paris", "Bob"], "start": [11, 19, 26, 34], "end": [13, 21, 30, 36]}},
        {"passage": "@highlight Ann met Bob in Paris . Bob left .", "query": "Ann met @placeholder",
         "entities": ["Bob", "Ann", "Paris"], "answers": ["Bob"], "idx": {"passage": 0, "query": 1},
         "entity_spans": {"text": ["Ann", "Bob", "Paris", "Bob"], "start": [11, 19, 26, 34], "end": [13, 21, 30, 36]}},
        {"passage": "Café owners in Rome .", "query": "owners in @placeholder", "entities": ["Rome"],
         "answers": ["Rome"], "idx": {"passage": 1, "query": 2},
         "entity_spans": {"text": ["Rome"], "start": [15], "end": [18]}}],
    ("aps/super_glue", "rte"): [{"premise": S[i], "hypothesis": S[3 - i], "idx": i, "label": i % 2} for i in range(3)],
    ("aps/super_glue", "wic"): [{"word": "fly", "sentence1": S[2], "sentence2": "They fly .", "start1": 6, "end1": 9,
                                 "start2": 5, "end2": 8, "idx": i, "label": i % 2} for i in range(3)],
    ("aps/super_glue", "wsc"): [{"text": "Ann told Bob that he won .", "span1_index": 2, "span2_index": 4,
                                 "span1_text": "Bob", "span2_text": "he", "idx": i, "label": i % 2} for i in range(3)],
}


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset serving HUB from memory (every split the same rows, shifted so splits differ)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        rows = HUB[(path, name)]
        return datasets.Dataset.from_list(rows if split == "train" else rows[::-1])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_get_data_writes_the_official_layout_that_train_py_reads(fake_hub, tmp_path, capsys):
    import data_utils

    out = tmp_path / "data"
    assert get_data.main([str(out), "--tasks", "all"]) == 0
    printed = capsys.readouterr()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        [f"super_glue/{t}/{f}" for t in ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC")
         for f in ("train.jsonl", "val.jsonl")]
        + [f"glue/{t}/{f}" for t in ("CoLA", "SST-2", "MRPC", "QQP", "STS-B", "QNLI", "RTE", "WNLI")
           for f in ("train.tsv", "dev.tsv")]
        + ["glue/MNLI/train.tsv", "glue/MNLI/dev_matched.tsv", "glue/MNLI/dev_mismatched.tsv"])
    assert len(printed.out.splitlines()) == len(files) + 1  # a line per file, then how to use them
    for name, task in data_utils.TASKS.items():  # train.py's reader gives back the Hub rows (through load_split)
        for split in ("train", "validation"):
            local, hub = data_utils.load_split(task, split, str(out)), data_utils.load_split(task, split, None)
            assert len(local) == len(hub) > 0
            for a, b in zip(local, hub):
                for k, v in a.items():
                    if k == "entities":
                        assert set(v) == set(b[k])
                    elif not (k == "idx" and task.benchmark == "glue"):
                        assert v == b[k], (name, split, k)

    # as the official downloads write them
    cb = [json.loads(line) for line in (out / "super_glue/CB/train.jsonl").read_text().splitlines()]
    assert cb[1] == {"premise": S[1], "hypothesis": S[2], "idx": 1, "label": "contradiction"}
    assert json.loads((out / "super_glue/BoolQ/train.jsonl").read_text().splitlines()[1])["label"] is True
    wsc = json.loads((out / "super_glue/WSC/train.jsonl").read_text().splitlines()[0])
    assert wsc["target"] == {"span2_index": 4, "span1_index": 2, "span1_text": "Bob", "span2_text": "he"}
    multirc = [json.loads(line) for line in (out / "super_glue/MultiRC/train.jsonl").read_text().splitlines()]
    assert len(multirc) == 2 and [len(q["answers"]) for q in multirc[0]["passage"]["questions"]] == [2, 1]
    assert multirc[0]["passage"]["questions"][0]["answers"][1] == {"text": "answer 1", "idx": 1, "label": 1}
    record = [json.loads(line) for line in (out / "super_glue/ReCoRD/train.jsonl").read_text().splitlines()]
    assert len(record) == 2 and len(record[0]["qas"]) == 2
    assert record[0]["passage"]["entities"][0] == {"start": 11, "end": 13}
    assert record[0]["qas"][0]["answers"] == [{"start": 11, "end": 13, "text": "Ann"}]
    assert (out / "glue/CoLA/train.tsv").read_text().splitlines()[0] == f"\t0\t*\t{S[0]}"  # no header row
    rte = (out / "glue/RTE/dev.tsv").read_text().splitlines()
    assert rte[0] == "index\tsentence1\tsentence2\tlabel" and rte[1].endswith("\tentailment")
    assert (out / "glue/STS-B/train.tsv").read_text().splitlines()[1].endswith("\t3.8")
    assert (out / "glue/SST-2/train.tsv").read_text().splitlines()[1] == f"{S[0]} \t1"
    assert not list(out.glob(".tmp-*"))

    # again: every file is kept, nothing is downloaded
    fake_hub.clear()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert get_data.main([str(out), "--tasks", "superglue"]) == 0
    assert fake_hub == [] and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert capsys.readouterr().out.count("kept ") == 16


def test_get_data_shared_files_are_written_once(fake_hub, tmp_path, capsys):
    assert get_data.main([str(tmp_path), "--tasks", "wsc,wsc_bool,mnli,mnli_mismatched"]) == 0
    assert sorted(fake_hub) == sorted([
        ("aps/super_glue", "wsc", "train"), ("aps/super_glue", "wsc", "validation"), ("nyu-mll/glue", "mnli", "train"),
        ("nyu-mll/glue", "mnli", "validation_matched"), ("nyu-mll/glue", "mnli", "validation_mismatched")])

"""The floor plan (docs/ARCHITECTURE.md) as checks: one place per fact, no private reach-ins, function sizes, the
torch-free table readers, and what the package installs."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

CODE = sorted([*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("residual_prompts/*.py"),
               *ROOT.glob("examples/*.py")])


def trees():
    return [(p.relative_to(ROOT).as_posix(), ast.parse(p.read_text())) for p in CODE]


def places(predicate):
    """{file: [line, ...]} of the nodes for which predicate(node) holds."""
    out = {}
    for name, tree in trees():
        lines = [n.lineno for n in ast.walk(tree) if predicate(n)]
        if lines:
            out[name] = lines
    return out


def const(n, values):
    return isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in values


def test_run_folder_file_names_are_written_in_run_files_only():
    names = {"args.json", "results.json", "checkpoint.pt", "train_state.pt", "prompt.npy", "score_dict.npy",
             "metrics.jsonl", "all_results.json", ".lock"}
    assert set(places(lambda n: const(n, names))) == {"run_files.py"}


def test_exit_codes_are_defined_once():
    defined = places(lambda n: isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id.startswith("EXIT_") for t in n.targets))
    assert set(defined) == {"residual_prompts/errors.py"}


def test_the_complete_decision_and_results_schema_live_in_run_files():
    """Only run_files.py reads results.json's "complete" (the rest call is_complete) and builds results.json's
    record (run_info, results_record, all_results)."""
    def reads_complete(n):
        return ((isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get"
                 and n.args and const(n.args[0], {"complete"}))
                or (isinstance(n, ast.Subscript) and const(n.slice, {"complete"})))
    assert set(places(reads_complete)) <= {"run_files.py", "run_folder.py"}  # run_folder: in an error message
    for keys in ({"complete", "validation"}, {"trainable_params", "data_fingerprint"}):
        writers = places(lambda n: isinstance(n, ast.Dict) and keys <= {k.value for k in n.keys
                                                                        if isinstance(k, ast.Constant)})
        assert set(writers) <= {"run_files.py"}, (keys, writers)
    assert "results_record" in (ROOT / "run_files.py").read_text()


def test_the_trainable_parts_and_the_family_test_are_in_one_place():
    parts = places(lambda n: isinstance(n, (ast.Tuple, ast.List, ast.Set)) and
                   {"prompt", "reparam"} <= {e.value for e in n.elts if isinstance(e, ast.Constant)})
    assert set(parts) == {"residual_prompts/base.py"}
    model_type_tests = places(lambda n: isinstance(n, ast.Compare) and isinstance(n.left, ast.Attribute)
                              and n.left.attr == "model_type")
    assert set(model_type_tests) <= {"residual_prompts/models.py", "residual_prompts/encoder.py"}
    wrapper_classes = places(lambda n: isinstance(n, ast.Call) and getattr(n.func, "id", "") == "isinstance"
                             and any(getattr(a, "attr", getattr(a, "id", "")) in ("PromptT5", "PromptedEncoderClassifier")
                                     for a in ast.walk(n.args[1])))
    assert not wrapper_classes, wrapper_classes


def test_no_private_argparse_and_no_private_reach_ins():
    assert not places(lambda n: isinstance(n, ast.Attribute) and n.attr in ("_actions", "_option_string_actions"))
    ours = {p.stem for p in CODE} | {"tu", "rf", "models", "data_utils"}

    def private_use(n):
        return (isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
                and isinstance(n.value, ast.Name) and n.value.id in ours)
    found = {f: lines for f, lines in places(private_use).items() if f.startswith(("scripts/", "examples/"))}
    assert not found, found


def test_no_function_is_longer_than_100_lines():
    long = {f"{name}:{n.name}": n.end_lineno - n.lineno + 1 for name, tree in trees() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 100}
    assert not long, long


def test_no_test_fixture_is_defined_twice():
    seen = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in n.decorator_list):
                seen.setdefault(n.name, []).append(path.name)
    twice = {k: v for k, v in seen.items() if len(v) > 1}
    assert not twice, twice


@pytest.mark.slow
def test_the_library_imports_without_the_cli():
    """The package stands alone: importing its API loads none of the CLI's modules (the parser, the run folder,
    the trainer), and its modules import nothing from the top level."""
    code = ("import sys; import residual_prompts as rp; rp.ResidualPromptConfig; rp.get_residual_prompt_model; "
            "rp.load_residual_prompt; print(sorted(m for m in ('arguments', 'run_folder', 'run_files', "
            "'train_utils', 'train', 'data_utils', 'distributed', 'tracking', 'peft_adapter') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip().endswith("[]"), out.stdout
    top = {p.stem for p in ROOT.glob("*.py")}
    for path in ROOT.glob("residual_prompts/*.py"):
        for n in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else [])
            assert not {x.split(".")[0] for x in names} & top, (path.name, names)


@pytest.mark.slow
def test_table_scripts_read_runs_without_torch(tmp_path):
    """make_table.py and plot_curves.py on finished runs import no torch (run_files is torch-free)."""
    from test_workflow_tables import ARGS, PT, write_run

    for seed in (1, 2):
        write_run(tmp_path / "runs", f"cb_s{seed}", [0.5, 0.6], 0.55, seed=seed, **PT)
    code = (f"import sys, importlib.util as u; sys.path.insert(0, {str(ROOT)!r}); "
            f"s = u.spec_from_file_location('mt', {str(ROOT / 'scripts' / 'make_table.py')!r}); "
            f"m = u.module_from_spec(s); s.loader.exec_module(m); rc = m.main([{str(tmp_path / 'runs')!r}]); "
            f"print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert "NO_TORCH 0" in out.stdout, out.stdout[-1500:]
    assert ARGS  # the helper's defaults are what the tables read


@pytest.mark.slow
def test_the_wheel_holds_the_package_only(tmp_path):
    """pip builds a wheel holding residual_prompts/ alone: no generic top-level module (models, errors, prompts,
    data_utils...) goes into site-packages."""
    import shutil

    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info beside the sources it builds
    shutil.copytree(ROOT / "residual_prompts", src / "residual_prompts", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and "setuptools" in out.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("residual_prompts-*.whl"))
    tops = {Path(n).parts[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not re.search(r"\.dist-info$", t)} == {"residual_prompts"}


def test_the_choice_names_are_the_keys_of_what_acts_on_them():
    """residual_prompts/names.py (torch-free, read by the parser) lists exactly the keys, in order, of the maps
    that act on each name."""
    import train_utils
    from residual_prompts import base, names, prompts, res_mlp

    assert tuple(res_mlp.NETWORKS) == names.NETWORK_NAMES
    assert tuple(prompts.INITIALIZERS) == names.INITIALIZER_NAMES
    assert tuple(base.PRECISIONS) == names.PRECISION_NAMES
    assert tuple(train_utils.OPTIMIZERS) == names.OPTIMIZER_NAMES


@pytest.mark.slow
def test_bad_input_is_refused_before_torch_loads():
    """train.py checks its arguments before it imports torch and transformers: a bad value is refused in a
    fraction of a second, and `scripts/sweep.py list` (which checks every run with the same parser) needs neither."""
    code = ("import sys, train; rc = train.main(['--task', 'cb', '--lr', '-1', '--save_name', 'x']); "
            "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "2 []", (out.stdout, out.stderr[-1500:])
    assert out.stderr.strip() == "train.py: error: learning rates must be positive and finite, got --lr -1.0"
    code = ("import sys, runpy, atexit; sys.argv = ['sweep.py', 'list', 'scripts/sweeps/table1.yaml']; "
            "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)); "
            "runpy.run_path('scripts/sweep.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "--prefix_MLP MLP1" in out.stdout, out.stderr[-1500:]
    assert out.stderr.strip().splitlines()[-1] == "NO_TORCH", out.stderr[-1500:]


def test_no_tracked_file_is_over_one_megabyte():
    """Nothing large is committed (records, figures and docs stay small; data and models live outside)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    sizes = {name: (ROOT / name).stat().st_size for name in out.stdout.decode().split("\0")
             if name and (ROOT / name).is_file()}
    assert sizes, "git ls-files listed nothing"
    big = {name: size for name, size in sizes.items() if size > 1_000_000}
    assert not big, big

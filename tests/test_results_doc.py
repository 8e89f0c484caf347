"""docs/RESULTS.md is regenerated from the committed run records: docs/results/make_tables.sh, run in a copy of the
repository, must reproduce every table in it byte for byte, and the learning rates its main comparison uses must be
the ones its lr table reports as each method's validation choice."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "docs" / "results" / "make_tables.sh"


def _copy_repo(dst: Path) -> None:
    for path in ROOT.glob("*.py"):
        shutil.copy2(path, dst / path.name)
    shutil.copytree(ROOT / "scripts", dst / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "docs").mkdir()
    shutil.copy2(ROOT / "docs" / "RESULTS.md", dst / "docs" / "RESULTS.md")
    shutil.copytree(ROOT / "docs" / "results", dst / "docs" / "results")


def test_every_results_table_regenerates_from_the_committed_records(tmp_path):
    _copy_repo(tmp_path)
    doc = tmp_path / "docs" / "RESULTS.md"
    # blank every table first, so an unchanged document cannot pass by the script filling nothing
    blanked, n = re.subn(r"(<!-- table: \w+ -->\n).*?(<!-- end -->)", r"\1\2", doc.read_text(), flags=re.S)
    assert n >= 10
    doc.write_text(blanked)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(tmp_path / "docs" / "results" / "make_tables.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n} tables filled" in done.stdout
    assert doc.read_text() == (ROOT / "docs" / "RESULTS.md").read_text()


def _spread_best_lr(table: str) -> dict:
    """(method, task) -> best lr, from make_table --spread's rows in lr_val.md."""
    best = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and re.fullmatch(r"\d[0-9.e-]*", cells[2]):
            best[(cells[0], cells[1])] = float(cells[2])
    return best


def test_the_main_comparison_uses_each_methods_validation_chosen_lr():
    best = _spread_best_lr((ROOT / "docs" / "results" / "lr_val.md").read_text())
    script = SCRIPT.read_text()
    chosen = {}
    for var, method in (("LR_PT", "PT"), ("LR_NORES", "PT + MLP1 (no residual)"), ("LR_RES", "Residual PT (MLP1)")):
        decl = re.search(rf"{var}=\(([^)]*)\)", script).group(1)
        for task, lr in re.findall(r"\[(\w+)\]=([0-9.]+)", decl):
            chosen[(method, task)] = float(lr)
    # cola has no grid for the network without the skip: it runs at Residual PT's lr there (the script says so)
    assert chosen.pop(("PT + MLP1 (no residual)", "cola")) == chosen[("Residual PT (MLP1)", "cola")]
    assert chosen and set(chosen) == set(best)
    assert chosen == best


def test_the_cls_comparison_runs_each_method_at_its_main_comparison_lr():
    """Section 5 changes the pooling only: its runs use the sst2 lrs of the main comparison."""
    script = SCRIPT.read_text()
    block = script[script.index("# 5. The prompt carries the task"):script.index("# 6. Cost")]
    assert "sst2-pt_cls-len10-lr${LR_PT[sst2]}-" in block and "sst2-pt-len10-lr${LR_PT[sst2]}-" in block
    assert "sst2-residual_pt_cls-len10-lr${LR_RES[sst2]}-" in block
    assert "sst2-residual_pt-len10-lr${LR_RES[sst2]}-" in block

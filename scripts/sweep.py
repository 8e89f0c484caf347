"""Expand a sweep file into train.py runs; list them, run one, write a SLURM array job for all, or count progress.

    python scripts/sweep.py list   scripts/sweeps/table1.yaml                  # NAME<TAB>COMMAND, one line per run
    python scripts/sweep.py sbatch scripts/sweeps/table1.yaml -o jobs/table1.sbatch   # + jobs/table1.runs (run list)
    sbatch jobs/table1.sbatch                                                   # one array task per run
    python scripts/sweep.py status jobs/table1.runs                            # complete / partial / missing
    python scripts/sweep.py run    jobs/table1.runs 5                          # run index 5 here (what a task calls)
    python scripts/sweep.py run    scripts/sweeps/smoke.yaml all -j 2          # no SLURM: every run here, 2 at a time

Every subcommand takes `--set KEY=VALUE` (repeatable) to override the file: `--set model_name=/models/t5-base`,
`--set data_dir=../shared/data`, `--set seed=1,2` (a comma list makes a grid axis), `--set method=pt,residual_pt`
(keep those methods), `--set sbatch.partition=gpu` (`--set sbatch.gres=` drops a directive).

A sweep file (YAML, or JSON with a .json suffix) holds:
    name: table1                       # job name, log folder (default: the file name)
    description: ...                   # optional free text
    fixed:   {FLAG: VALUE, ...}        # train.py flags of every run (null: leave the flag out)
    methods: {METHOD: {FLAG: VALUE}}   # optional named bundles of flags; a method overrides `fixed`
    grid:    {FLAG: [VALUE, ...]}      # the runs are methods x the product of these lists
    run_name: "{task}_{method}_{seed}" # optional; default TASK-METHOD-[other grid axes]-lenP-lrX-seedS
    tie:     {FLAG: OTHER_FLAG}        # optional; FLAG takes OTHER_FLAG's value in every run (data_seed: seed)
    sbatch:  {time: 1-00:00:00, gres: gpu:1, max_parallel: 8}   # extra #SBATCH directives
FLAG is a train.py option without its dashes; a name train.py does not know, a value of the wrong type, or a run that
train.py would refuse is an error (one line, exit 2) before anything runs. `save_name` is the run name.
Run order: task (when a grid axis), then method, then the other grid axes in file order (the last varies fastest).
Relative paths (save_dir, data_dir, model_name, prefix_path, logs) are relative to the folder sweep.py is run in,
as train.py's are to the folder it is run in: every run starts there (locally, and under SLURM through the job's
--chdir, the folder `sweep.py sbatch` was run in). The sweep files of scripts/sweeps/ are written for the project
root: run sweep.py from there.

The array job looks each run up by index in the run list written next to it, so editing the sweep file later
cannot reorder the runs of a submitted job. A run whose results.json says "complete" (with the same arguments) is
skipped; any other run goes to train.py, which continues its checkpoint (--resume auto). SIGUSR1 before the time
limit (#SBATCH --signal=B:USR1@300) reaches train.py through scripts/requeue_on_signal.sh, which requeues the task.

Without SLURM, `run SWEEP SELECTION [-j N]` runs the selected runs on this machine, N at a time, each train.py in
a child process (output appended to --logs DIR/INDEX.log, default logs/NAME/ as the array job's). SELECTION is
`all`, an index, a range `0-3`, or a comma list of those (`0-3,7`). Complete runs are skipped as above; the others
go to train.py, which continues an interrupted run from its checkpoint, so rerunning the same command finishes a
sweep. One line per run as it is skipped, starts, and ends (with train.py's exit code and, on failure, the last
line of its log), then a summary. A lone INDEX without -j or --gpus keeps the array task's behaviour: train.py
replaces this process (exec), its output goes to the terminal. --gpus 0,1 gives each run one GPU
(CUDA_VISIBLE_DEVICES; -j defaults to the number of GPUs); without it OMP_NUM_THREADS is set to cores / N unless
already set. Ctrl-C (SIGINT), SIGTERM or SIGUSR1 is passed to the running train.py processes, which write a
checkpoint and exit 75; no further run starts (a second signal stops them at once). Exit code: 0 every selected run
is complete; 1 a run failed; 2 bad input; 75 stopped by a signal (run the same command again to go on).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import itertools
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import tempfile
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from residual_prompts.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED  # noqa: E402

TRAIN_EXITS = {0: "done", 2: "bad input", 3: "diverged", 75: "stopped, checkpoint written"}  # train.py's codes
TOP_KEYS = ("name", "description", "fixed", "methods", "grid", "run_name", "sbatch", "tie")
OWN_DIRECTIVES = ("array", "requeue", "chdir", "open-mode")  # written by this script: a sweep may not set them
ABBREV = {"prefix_len": "len", "select_k_per_class": "k", "prompt_init": "init_", "bottleneck_size": "m",
          "mlp_dropout": "drop", "batch_size": "bs", "num_epochs": "ep", "data_seed": "dseed", "prefix_MLP": ""}


class SweepError(Exception):
    """Bad sweep file or command line: reported as one line, exit 2."""


# ---------------------------------------------------------------------------------------------------------------
# train.py's parser (arguments.py) is the one authority on flag names, types and choices.
# ---------------------------------------------------------------------------------------------------------------

def _arguments():
    import arguments
    return arguments


def _flags():
    """{flag name: argparse action} of train.py, help excluded."""
    parser = _arguments().build_parser()
    return dict(parser.flags)


def _fmt(value):
    """Canonical text of a value: the same in commands and run names (0.3, 0.0003, 1e-05, 10, MLP1)."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _coerce(flag, value, flags, where):
    """A sweep value as train.py would parse it (None: leave the flag out)."""
    if flag not in flags:
        near = difflib.get_close_matches(flag, flags, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise SweepError(f"{where}: unknown train.py flag {flag!r}{hint}; see python train.py --help")
    if flag == "save_name":
        raise SweepError(f"{where}: save_name is set by the sweep (the run name); use run_name to shape it")
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        raise SweepError(f"{where}: {flag} must be a single value here, got {value!r} (lists go in grid)")
    if re.search(r"[\x00-\x1f\x7f]", str(value)):
        raise SweepError(f"{where}: {flag} {value!r} holds a control character (a newline?): remove it")
    action = flags[flag]
    kind = action.type or str
    try:
        if isinstance(value, bool):
            value = int(value) if kind is not str else str(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        value = kind(value) if kind in (int, float) else str(value)
    except ValueError:
        raise SweepError(f"{where}: {flag} needs a {kind.__name__}, got {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise SweepError(f"{where}: {flag} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Sweep file -> runs
# ---------------------------------------------------------------------------------------------------------------

def load_sweep(path):
    """The sweep file as a dict (YAML, or JSON for a .json suffix)."""
    try:
        text = _read_regular(path, "sweep file")
    except UnicodeDecodeError:
        raise SweepError(f"{path} is not a text file: pass a sweep file (.yaml, .yml, .json)") from None
    import yaml

    try:
        spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:  # the parser's message names line and column
        raise SweepError(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                         f"{' '.join(str(e).split())}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(spec) - set(TOP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)}")
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(spec["name"], str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", spec["name"]):
        raise SweepError(f"{path}: name {spec['name']!r} may use letters, digits and _ . + - only")
    if not isinstance(spec.get("run_name", ""), str):
        raise SweepError(f"{path}: run_name must be a text template, got {spec['run_name']!r}")
    return spec


def _read_regular(path, what):
    """The text of a file the user named: a regular file (a FIFO or device would block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise SweepError(f"cannot read {what} {path} ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SweepError(f"{what} {path} is not a regular file (a FIFO, device or folder): pass a file")
        return f.read().decode("utf-8")


def _mapping(spec, key, path):
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise SweepError(f"{path}: {key} must be a mapping, got {type(value).__name__}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise SweepError(f"{path}: {key} has the key {bad[0]!r}: keys are train.py flag names (text)")
    return dict(value)


def apply_sets(spec, sets, path):
    """Apply --set KEY=VALUE overrides (strings) to a loaded sweep; returns a new dict."""
    spec = {**spec, **{k: _mapping(spec, k, path) for k in ("fixed", "methods", "grid", "tie")}}
    spec["methods"] = {m: dict(b) if isinstance(b, dict) else b for m, b in spec["methods"].items()}  # own copies
    spec["sbatch"] = _mapping(spec, "sbatch", path)
    for item in sets:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not eq or not key:
            raise SweepError(f"--set {item!r}: expected KEY=VALUE")
        if key.startswith("sbatch."):
            if value == "":
                spec["sbatch"].pop(key[7:], None)
            else:
                spec["sbatch"][key[7:]] = value
        elif key == "method":
            keep = [m for m in value.split(",") if m]
            if not keep:
                raise SweepError("--set method= needs one or more method names (comma-separated)")
            missing = [m for m in keep if m not in spec["methods"]]
            if missing:
                raise SweepError(f"--set method: no method {', '.join(missing)} in {path}; "
                                 f"it has {', '.join(spec['methods']) or 'none'}")
            spec["methods"] = {m: spec["methods"][m] for m in keep}
        elif key in ("name", "run_name"):
            spec[key] = value
        elif key not in _flags():
            near = difflib.get_close_matches(key, _flags(), n=1)
            raise SweepError(f"--set {key}: no such train.py flag{f' (did you mean {near[0]}?)' if near else ''}; "
                             f"other keys: method, name, run_name, sbatch.DIRECTIVE")
        else:  # a train.py flag: final say over fixed, methods and grid
            for bundle in spec["methods"].values():
                if isinstance(bundle, dict):
                    bundle.pop(key, None)
            if key in spec["grid"] or "," in value:  # a grid axis stays one (it stays in the run name)
                spec["fixed"].pop(key, None)
                spec["grid"][key] = [v for v in value.split(",") if v != ""]
            else:
                spec["fixed"][key] = value
    for key, value in spec["sbatch"].items():  # checked for every command, not only when written
        if value is not None:
            _directive(key, value, path)
    return spec


def expand(spec, path="sweep", check=True):
    """The sweep's runs, in order: [{"name", "method", "argv" (train.py arguments), "values"}]."""
    flags = _flags()
    fixed = {k: _coerce(k, v, flags, f"{path}: fixed") for k, v in spec["fixed"].items()}
    methods = {}
    for m, bundle in spec["methods"].items():
        if not re.fullmatch(r"[A-Za-z0-9_.+]+", str(m)):
            raise SweepError(f"{path}: method name {m!r} may use letters, digits and _ . + only")
        if not isinstance(bundle, dict):
            raise SweepError(f"{path}: methods.{m} must be a mapping of train.py flags")
        methods[str(m)] = {k: _coerce(k, v, flags, f"{path}: methods.{m}") for k, v in bundle.items()}
    grid = {}
    for k, values in spec["grid"].items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid.{k} must be a non-empty list, got {values!r}")
        grid[k] = [_coerce(k, v, flags, f"{path}: grid.{k}") for v in values]
        if len(set(map(_fmt, grid[k]))) < len(grid[k]):
            raise SweepError(f"{path}: grid.{k} repeats a value: {grid[k]}")
        if k in fixed:
            raise SweepError(f"{path}: {k} is both in fixed and in grid; keep one")
        for m, bundle in methods.items():
            if k in bundle:
                raise SweepError(f"{path}: {k} is both in methods.{m} and in grid; keep one")

    tie = _ties(spec, fixed, methods, grid, flags, path)
    axes = [k for k in grid if k != "task"]
    template = spec.get("run_name") or _default_template((["task"] if "task" in grid else []) + axes, bool(methods))
    runs, seen = [], {}
    for task in grid.get("task", [None]):  # order: task, method, then the other axes (the last varies fastest)
        for method in list(methods) or [None]:
            for combo in itertools.product(*(grid[k] for k in axes)):
                point = dict(zip(axes, combo), **({} if task is None else {"task": task}))
                values = {**fixed, **(methods[method] if method else {}), **point}
                values.update({dst: values.get(src) for dst, src in tie.items()})
                values = {k: v for k, v in values.items() if v is not None}
                if "task" not in values:
                    raise SweepError(f"{path}: no task: set task in fixed, a method or grid")
                name = _run_name(template, values, method, flags, path)
                if name in seen:
                    raise SweepError(f"{path}: runs {seen[name]} and {len(runs)} are both named {name!r}: "
                                     f"add the field that tells them apart to run_name")
                seen[name] = len(runs)
                argv = ["--task", _fmt(values["task"])]
                for k, v in values.items():
                    if k not in ("task", "save_dir"):
                        argv += [f"--{k}", _fmt(v)]
                argv += ["--save_dir", _fmt(values.get("save_dir", flags["save_dir"].default)), "--save_name", name]
                runs.append({"name": name, "method": method, "argv": argv, "values": values})
    if check:
        check_runs(runs, path)
    return runs


def _ties(spec, fixed, methods, grid, flags, path):
    """`tie: {FLAG: SOURCE}`: FLAG takes SOURCE's value in every run; FLAG may not be set anywhere else."""
    tie = spec.get("tie") or {}
    for dst, src in tie.items():
        for flag in (dst, src):
            if flag not in flags:
                raise SweepError(f"{path}: tie.{dst}: {flag!r} is not a train.py flag")
        if dst == src or dst in tie.values():
            raise SweepError(f"{path}: tie.{dst}: {dst} is tied to {src}; a flag cannot be both a source and a target")
        if dst in fixed or dst in grid or any(dst in b for b in methods.values()):
            raise SweepError(f"{path}: {dst} is tied to {src} (tie) and also set; remove one")
    return {str(k): str(v) for k, v in tie.items()}


def _default_template(axes, has_methods):
    first, last = ["task", "method"] if has_methods else ["task"], ["prefix_len", "lr", "seed"]
    fields = first + [a for a in axes if a not in first + last] + last
    return "-".join(("{%s}" if f in ("task", "method") else ABBREV.get(f, f) + "{%s}") % f for f in fields)


def _run_name(template, values, method, flags, path):
    class Fields(dict):
        def __missing__(self, key):
            if key not in flags:
                raise SweepError(f"{path}: run_name uses {{{key}}}, which is no train.py flag (nor 'method')")
            return _fmt(flags[key].default)
    fields = Fields({k: _fmt(v) for k, v in values.items()})
    fields["method"] = method or ""
    try:
        name = template.format_map(fields)
    except (ValueError, IndexError) as e:
        raise SweepError(f"{path}: bad run_name {template!r} ({e})") from None
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", name)  # a folder name: no '/' or spaces


def check_runs(runs, path):
    """Every run must get past train.py's own parsing and checks (task, types, invalid combinations)."""
    arguments = _arguments()
    from data_utils import TASKS
    from residual_prompts.errors import ConfigError

    parser = arguments.build_parser()

    def refuse(message):
        raise SweepError(message)

    for i, run in enumerate(runs):
        parser.error = lambda message, i=i, run=run: refuse(
            f"{path}: run {i} ({run['name']}): train.py would refuse it: {message}")
        args = parser.parse_args(run["argv"])
        if args.task not in TASKS:
            raise SweepError(f"{path}: run {i} ({run['name']}): unknown task {args.task!r}; "
                             f"valid: {', '.join(sorted(TASKS))}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # check_args prints notes
                arguments.check_args(args)
        except ConfigError as e:
            raise SweepError(f"{path}: run {i} ({run['name']}): train.py would refuse it: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Run lists: the file the array job reads (the output of `list`, with a header)
# ---------------------------------------------------------------------------------------------------------------

def command_line(run):
    return "python " + shlex.join(["train.py"] + run["argv"])


def read_runs(source, sets):
    """Runs of a sweep file (.yaml/.yml/.json) or of a run list written by `sbatch` (.runs)."""
    if source.endswith(".runs"):
        if sets:
            raise SweepError(f"--set applies to a sweep file, not to the run list {source} (it is fixed)")
        try:
            lines = [ln for ln in _read_regular(source, "run list").splitlines()
                     if ln.strip() and not ln.startswith("#")]
        except UnicodeDecodeError:
            raise SweepError(f"{source} is not a text run list: write it again with sweep.py sbatch") from None
        runs = []
        for n, line in enumerate(lines):
            name, tab, command = line.partition("\t")
            try:
                words = shlex.split(command)
            except ValueError as e:  # a torn line: an unclosed quotation
                raise SweepError(f"{source}: run {n} is torn ({e}): write the list again with sweep.py sbatch"
                                 ) from None
            if not tab or words[:2] != ["python", "train.py"]:
                raise SweepError(f"{source}: run {n} is not 'NAME<TAB>python train.py ...': {line[:80]!r}")
            runs.append({"name": name, "argv": words[2:]})
        return runs, os.path.splitext(os.path.basename(source))[0]
    if not source.endswith((".yaml", ".yml", ".json")):
        raise SweepError(f"{source}: expected a sweep file (.yaml, .yml, .json) or a run list (.runs)")
    spec = apply_sets(load_sweep(source), sets, source)
    return expand(spec, source), spec["name"]


def run_dir(argv):
    """The run folder of train.py ARGV run in this folder (relative paths: from the current folder, as train.py)."""
    parser = _arguments().build_parser()
    args = parser.parse_args(argv)
    return os.path.abspath(os.path.join(args.save_dir, args.save_name))


def run_state(path):
    """complete | running | failed (diverged: results.json holds an error) | partial | missing
    (run_files.run_status)."""
    import run_files

    return run_files.run_status(path)


def same_args(path, argv):
    """train.py's own test of whether a finished run was made with these arguments: [] or the differences."""
    arguments = _arguments()
    import run_files
    from residual_prompts.errors import ConfigError

    saved = run_files.read_json(os.path.join(path, run_files.ARGS))
    if not saved:
        return ["no readable args.json"]
    parser = arguments.build_parser()
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            arguments.check_args(args)
    except ConfigError as e:  # train.py will say it properly
        return [str(e)]
    return run_files.differing_args(saved, vars(args))


# ---------------------------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------------------------

def _show(path):
    """A path as the user should type it: relative to the current folder when inside it (runs start there)."""
    path, here = os.path.abspath(path), os.getcwd()
    return os.path.relpath(path, here) if path.startswith(here + os.sep) else path


def _script(name):
    """scripts/NAME as the job's shell finds it from its --chdir (the current folder): relative from the project
    root, absolute elsewhere."""
    return shlex.quote(_show(os.path.join(ROOT, "scripts", name)))


def cmd_list(a):
    runs, _ = read_runs(a.sweep, a.set)
    for run in runs:
        print(f"{run['name']}\t{command_line(run)}")
    return 0


def parse_selection(text, n):
    """Indices of SELECTION (all | I | A-B | comma list of those) among ``n`` runs, in the order given, each once."""
    if n == 0:
        raise SweepError("the sweep has no runs")
    picked = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            picked += range(n)
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise SweepError(f"selection {text!r}: expected all, an index, a range A-B, or a comma list of those "
                             f"(runs 0-{n - 1})")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if lo > hi:
            raise SweepError(f"selection {part!r}: the range runs backwards; write {hi}-{lo}")
        if hi >= n:
            raise SweepError(f"index {hi} is out of range: the sweep has {n} runs (0-{n - 1})")
        picked += range(lo, hi + 1)
    return list(dict.fromkeys(picked))


def skip_reason(run):
    """'complete' when the run's folder holds a finished run with these arguments (nothing to do), else None.
    A finished run with other arguments goes to train.py, which refuses it with the differences."""
    path = run_dir(run["argv"])
    state = run_state(path)
    if state == "running":  # e.g. a run another sweep or a user started: still training, not failed
        import run_files

        return f"running: {_show(path)} is locked by {run_files.lock_holder(path) or 'another process'}"
    if state != "complete":
        return None
    diff = same_args(path, run["argv"])
    if diff:
        print(f"sweep.py: {run['name']} is complete with other arguments ({'; '.join(diff)}); train.py decides",
              flush=True)
        return None
    return "complete"


def cmd_run(a):
    runs, name = read_runs(a.sweep, a.set)
    single = re.fullmatch(r"-?\d+", a.selection.strip())
    if single and a.jobs is None and a.gpus is None:  # an array task: exec train.py (signals reach it directly)
        return run_one(a, runs, int(a.selection))
    if a.jobs is not None and a.jobs < 1:
        raise SweepError(f"-j {a.jobs}: give the number of runs at a time (1 or more)")
    gpus = None
    if a.gpus is not None:
        gpus = [g.strip() for g in a.gpus.split(",") if g.strip()]
        if not gpus:
            raise SweepError("--gpus needs one or more GPU ids, e.g. --gpus 0,1")
    selected = parse_selection(a.selection, len(runs))
    logs = a.logs or os.path.join("logs", name)
    logs = os.path.abspath(logs)
    return LocalSweep(runs, selected, name, a.jobs or (len(gpus) if gpus else 1), gpus, logs).run()


def run_one(a, runs, index):
    if not 0 <= index < len(runs):
        raise SweepError(f"index {index} is out of range: {a.sweep} has {len(runs)} runs (0-{len(runs) - 1})")
    run = runs[index]
    path = run_dir(run["argv"])
    if run_state(path) == "complete":
        diff = same_args(path, run["argv"])
        if not diff:
            print(f"sweep.py: skip run {index} {run['name']}: {path}/results.json is complete", flush=True)
            return 0
        print(f"sweep.py: run {index} {run['name']} is complete with other arguments ({'; '.join(diff)}); "
              f"train.py decides", flush=True)
    argv = [sys.executable, os.path.join(ROOT, "train.py")] + run["argv"]
    print(f"sweep.py: run {index} {run['name']}: {shlex.join(argv)}", flush=True)
    os.execv(sys.executable, argv)  # same process: a signal sent to it reaches train.py (checkpoint, exit 75)


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _last_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").replace("\r", "\n").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else ""



def _stop_with_parent(parent_pid):
    """preexec_fn of a run's train.py: on Linux, ask the kernel to send it SIGTERM when this sweep process dies, even
    by kill -9 (prctl PR_SET_PDEATHSIG), so that no run goes on unseen after its sweep: it checkpoints and exits 75,
    and the same sweep command continues it. Elsewhere (no prctl) nothing changes."""
    def setup():
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:  # the sweep died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return setup

class LocalSweep:
    """Runs the selected runs here, ``jobs`` train.py processes at a time (each in a session of its own: a signal
    reaches them through this process only, once)."""

    def __init__(self, runs, selected, name, jobs, gpus, logs):
        self.runs, self.selected, self.name, self.jobs, self.gpus, self.logs = runs, selected, name, jobs, gpus, logs
        self.running = {}  # index -> (Popen, start time, gpu, log path)
        self.stop_signal = None
        self.counts = {"done": 0, "skipped": 0, "failed": 0, "stopped": 0, "running": 0}

    def _say(self, text):
        print(f"sweep.py: {text}", flush=True)

    def _on_signal(self, signum, frame):
        first = self.stop_signal is None
        self.stop_signal = signum
        name = signal.Signals(signum).name
        if first:
            self._say(f"{name}: passed to {len(self.running)} running train.py (they write a checkpoint and exit "
                      f"75); no further run starts. Again to stop them at once")
        for proc, *_ in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def _env(self, gpu):
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, _cpus() // min(self.jobs, len(self.selected))))
        return env

    def _start(self, i):
        run = self.runs[i]
        gpu = None
        if self.gpus:  # the GPU with the fewest runs on it
            load = {g: 0 for g in self.gpus}
            for _, _, g, _ in self.running.values():
                load[g] += 1
            gpu = min(self.gpus, key=lambda g: load[g])
        os.makedirs(self.logs, exist_ok=True)
        log = os.path.join(self.logs, f"{i}.log")
        argv = [sys.executable, os.path.join(ROOT, "train.py")] + run["argv"]
        with open(log, "a") as f:
            f.write(f"== {time.strftime('%F %T')} sweep.py run {i} {run['name']}"
                    f"{'' if gpu is None else f' on GPU {gpu}'}: {shlex.join(argv)}\n")
            f.flush()
            proc = subprocess.Popen(argv, env=self._env(gpu), stdin=subprocess.DEVNULL, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_stop_with_parent(os.getpid()))
        self.running[i] = (proc, time.time(), gpu, log)
        self._say(f"start {i} {run['name']}{'' if gpu is None else f' (GPU {gpu})'}: log {_show(log)}")

    def _finish(self, i, rc):
        proc, t0, gpu, log = self.running.pop(i)
        what = TRAIN_EXITS.get(rc, f"killed by {signal.Signals(-rc).name}" if rc < 0 else "error")
        took = f"{time.time() - t0:.0f}s"
        if rc == 0:
            self.counts["done"] += 1
            self._say(f"done {i} {self.runs[i]['name']}: exit 0 in {took}")
        elif rc == EXIT_INTERRUPTED:
            self.counts["stopped"] += 1
            self._say(f"stopped {i} {self.runs[i]['name']}: exit 75 ({what}) in {took}")
        else:
            self.counts["failed"] += 1
            self._say(f"FAILED {i} {self.runs[i]['name']}: exit {rc} ({what}) in {took}: {_last_line(log)} "
                      f"[log {_show(log)}]")

    def run(self):
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM,
                                                                          signal.SIGUSR1)}
        todo = list(self.selected)
        self._say(f"{self.name}: {len(todo)} run(s) selected of {len(self.runs)}, {self.jobs} at a time"
                  + (f" on GPU(s) {','.join(self.gpus)}" if self.gpus else ""))
        try:
            while (todo and self.stop_signal is None) or self.running:
                while todo and self.stop_signal is None and len(self.running) < self.jobs:
                    i = todo.pop(0)
                    reason = skip_reason(self.runs[i])
                    if reason:
                        self.counts["running" if reason.startswith("running") else "skipped"] += 1
                        self._say(f"skip {i} {self.runs[i]['name']}: {reason}")
                    else:
                        self._start(i)
                for i in list(self.running):
                    rc = self.running[i][0].poll()
                    if rc is not None:
                        self._finish(i, rc)
                if self.running:
                    time.sleep(0.2)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        c = self.counts
        left = len(todo)
        self._say(f"{self.name}: {c['done']} done, {c['skipped']} skipped (complete), {c['failed']} failed"
                  + (f", {c['running']} running elsewhere" if c["running"] else "")
                  + (f", {c['stopped']} stopped, {left} not started" if self.stop_signal is not None else ""))
        if self.stop_signal is not None and (c["stopped"] or left) or c["running"] and not c["failed"]:
            return EXIT_INTERRUPTED  # not done yet, nothing failed: run it again later
        return EXIT_FAILED if c["failed"] else 0


def cmd_status(a):
    runs, name = read_runs(a.sweep, a.set)
    counts = {"complete": 0, "running": 0, "partial": 0, "failed": 0, "missing": 0}
    for i, run in enumerate(runs):
        path = run_dir(run["argv"])
        state = run_state(path)
        counts[state] += 1
        if a.verbose:
            print(f"{i}\t{state}\t{run['name']}\t{_show(path)}")
    print(f"{name}: {len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()
                                                    if n or s not in ("failed", "running")))
    return 0


def cmd_sbatch(a):
    spec = apply_sets(load_sweep(a.sweep), a.set, a.sweep)
    runs = expand(spec, a.sweep)
    script = os.path.abspath(a.output)
    run_list = script.removesuffix(".sbatch") + ".runs"
    directives = dict(spec["sbatch"])
    bad = [d for d in directives if d in OWN_DIRECTIVES]
    if bad:
        raise SweepError(f"{a.sweep}: sbatch.{bad[0]} is written by sweep.py; remove it")
    max_parallel = directives.pop("max_parallel", None)
    array = f"0-{len(runs) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    head = {"job-name": spec["name"], "array": array, "requeue": None, "signal": "B:USR1@300",
            "output": f"logs/{spec['name']}/%a.log", "open-mode": "append", "chdir": os.getcwd()}
    head.update(directives)
    log = os.path.abspath(head["output"])
    os.makedirs(os.path.dirname(log), exist_ok=True)  # SLURM does not create it: the task would fail unseen
    os.makedirs(os.path.dirname(script), exist_ok=True)

    origin = shlex.join([_show(a.sweep)] + [f"--set={s}" for s in a.set])
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    listed = (f"# run list of sweep {spec['name']}: {len(runs)} runs from {origin}, written {stamp} by "
              f"scripts/sweep.py\n# line i (0-based, comments excluded) = array index i: NAME<TAB>COMMAND "
              f"(run from {os.getcwd()})\n") + "".join(f"{run['name']}\t{command_line(run)}\n" for run in runs)
    lines = ["#!/bin/bash",
             f"# SLURM array job of sweep {spec['name']} ({len(runs)} runs), written {stamp} by scripts/sweep.py from",
             f"#   {origin}",
             f"# Submit: sbatch {_show(script)}     progress: python scripts/sweep.py status {_show(run_list)}",
             f"# Index i runs line i of {os.path.basename(run_list)}; complete runs are skipped: resubmit to go on.",
             "# SLURM runs it with the environment of sbatch: activate the virtual environment first (or set PYTHON)."]
    lines += [f"#SBATCH --{k}" + ("" if v is None else f"={shlex.quote(_directive(k, v, a.sweep))}")
              for k, v in head.items()]
    lines += ["set -uo pipefail",
              'PYTHON="${PYTHON:-python}"',
              "# torch's CPU threads: as many as the task's CPUs (by default it would use every core of the node)",
              'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then',
              '    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"',
              "fi",
              f"RUNS={shlex.quote(run_list)}",
              ('echo "== $(date "+%F %T") job ${SLURM_JOB_ID:-?} = ${SLURM_ARRAY_JOB_ID:-?}_${SLURM_ARRAY_TASK_ID:-?}'
               ' restart ${SLURM_RESTART_COUNT:-0} on $(hostname)"'),
              "# exec: the wrapper takes this shell's place, so SIGUSR1 (B:USR1) reaches it, and through it train.py;",
              "# a wrapper started as a child would not see it, and the signal would kill this shell and end the job.",
              f'exec bash {_script("requeue_on_signal.sh")} "$PYTHON" {_script("sweep.py")} run "$RUNS" '
              '"$SLURM_ARRAY_TASK_ID"',
              ""]
    text = "\n".join(lines)
    for what, body in (("run list", listed.replace("\t", " ")), ("script", text)):
        if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", body.replace("\n", " ")) or body.count("\n") != (
                len(runs) + 2 if what == "run list" else len(lines) - 1):
            raise SweepError(f"{a.sweep}: a value holds a control character (a newline?), which would change the "
                             f"{what}'s lines: remove it")
    _write_atomic(run_list, listed, 0o644)
    _write_atomic(script, text, 0o755)
    done = sum(run_state(run_dir(r["argv"])) == "complete" for r in runs)
    print(f"wrote {_show(script)} (array {array}) and {_show(run_list)}: {len(runs)} runs, {done} already complete;"
          f" submit with: sbatch {_show(script)} (its runs start in {os.getcwd()})")
    return 0


def _directive(key, value, path):
    """An #SBATCH value: one scalar, as text (quoted where written)."""
    if isinstance(value, (dict, list, bool)) or not isinstance(value, (str, int, float)):
        raise SweepError(f"{path}: sbatch.{key} must be a single value, got {value!r}")
    if re.search(r"[\x00-\x1f\x7f]", str(value)):
        raise SweepError(f"{path}: sbatch.{key} holds a control character (a newline?): remove it")
    return str(value)


def _write_atomic(path, text, mode):
    """``text`` into ``path`` through a temporary file beside it, renamed over it: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(EXIT_BAD_INPUT, f"sweep.py: error: {message} (see python scripts/sweep.py --help)\n")


def build_parser():
    p = Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    helps = {"list": "print NAME<TAB>COMMAND per run",
             "run": "run one entry (what an array task calls), or several here, -j N at a time",
             "status": "count complete / partial / missing runs", "sbatch": "write a SLURM array script + run list"}
    for name, fn in (("list", cmd_list), ("run", cmd_run), ("status", cmd_status), ("sbatch", cmd_sbatch)):
        s = sub.add_parser(name, help=helps[name], description=helps[name])
        s.add_argument("sweep", help="sweep file (.yaml/.yml/.json)" + ("" if name == "sbatch" else
                                                                         " or run list (.runs)"))
        if name == "run":
            s.add_argument("selection", metavar="SELECTION",
                           help="0-based run index (SLURM_ARRAY_TASK_ID: train.py replaces this process), or "
                                "all, A-B, a comma list: those runs here, -j at a time")
            s.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                           help="runs at a time (default 1; with --gpus, one per GPU)")
            s.add_argument("--gpus", default=None, metavar="IDS",
                           help="comma-separated GPU ids: each run gets one (CUDA_VISIBLE_DEVICES)")
            s.add_argument("--logs", default=None, metavar="DIR",
                           help="folder of the runs' logs INDEX.log (default logs/NAME, as the array job's)")
        if name == "sbatch":
            s.add_argument("-o", "--output", required=True, help="sbatch script to write; the run list goes "
                                                                  "next to it (NAME.sbatch -> NAME.runs)")
        if name == "status":
            s.add_argument("-v", "--verbose", action="store_true", help="one line per run")
        s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override the sweep file (repeatable): a train.py flag, method=A,B or sbatch.KEY")
        s.set_defaults(fn=fn)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `list ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except SweepError as e:
        print(f"sweep.py: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""Mutation testing of the pipeline modules with mutmut, one module at a time.

    .venv/bin/python -m tests.mutation                          # every module of modules.MODULES
    .venv/bin/python -m tests.mutation pdiff_fast/data.py       # one module

For each module: the tracked tree and the built extension copied to a work folder, a mutmut
config there naming the module and its tests (tests/mutation/modules.py), `mutmut run` (two
workers, one thread each), then every mutant classified: killed (a test failed), timeout (counts
as killed), survived, equivalent (a survivor matched by a rule of modules.EQUIVALENT, listed with
its reason), no tests (no selected test reaches the function: not killed). Score = (killed +
timeout) / (mutants - equivalent).

The results go to tests/mutation/scores.json (one entry per module, dated) and
docs/mutation-scores.md (made from the JSON). mutmut is installed by .ci/setup; this is not run
by CI (minutes per module), it is run after a change to a module or its tests.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

from .common import PLANTED_RESULTS, SCORES, copy_tree, load_results, save_results, write_docs
from .modules import EQUIVALENT, KNOWN_SURVIVORS, MODULES


def write_config(work: Path, module: str, tests: list[str]) -> None:
    lines = ["[mutmut]", "source_paths = pdiff_fast", f"only_mutate = {module}",
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests),
             "pytest_add_cli_args = -p no:cacheprovider -q -x",
             # everything else the tests may import or read (kernels/, benchmarks/, docs/, ...)
             "also_copy =", *(f"    {p.name}" for p in sorted(work.iterdir()) if p.name not in ("pdiff_fast", "setup.cfg")),
             "process_isolation = forkserver"]  # torch is not fork-safe after pytest ran
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


def mutmut(work: Path, *args: str, check: bool = True) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), *args], cwd=work, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        out = "\n".join(line for line in proc.stdout.splitlines() if line.strip() and line.strip()[0] not in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
        raise SystemExit(f"mutmut {' '.join(args)} failed in {work}:\n{out[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def change_of(diff: str) -> str:
    """The mutant's changed lines as 'old => new' (stripped, several joined by ' | ')."""
    old = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " | ".join(old) + " => " + " | ".join(new)


def equivalence(module: str, change: str, rules=EQUIVALENT) -> str | None:
    """The reason of the first rule of `rules` that matches: a regex over 'old => new', or a
    callable(old, new)."""
    old, _, new = change.partition(" => ")
    for pattern_module, rule, reason in rules:
        if not fnmatch.fnmatch(module, pattern_module):
            continue
        if rule(old, new) if callable(rule) else re.search(rule, change):
            return reason
    return None


def run_module(module: str, tests: list[str], work_root: Path, children: int) -> dict:
    work = work_root / module.replace("/", "_").removesuffix(".py")
    copy_tree(work)
    write_config(work, module, tests)
    started = datetime.datetime.now()
    mutmut(work, "run", "--max-children", str(children))
    seconds = (datetime.datetime.now() - started).total_seconds()
    status = {}
    for line in mutmut(work, "results", "--all", "true").splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name:
            status[name] = state
    counts = {state: sum(s == state for s in status.values()) for state in ("killed", "timeout", "no tests")}
    counts["other"] = sum(s not in ("killed", "timeout", "no tests", "survived") for s in status.values())
    alive = [{"mutant": short(name), "change": change_of(mutmut(work, "show", name)),
              **({"no tests": True} if state == "no tests" else {})}
             for name, state in status.items() if state in ("survived", "no tests")]
    entry = {"date": started.date().isoformat(), "tests": tests, "mutants": len(status), **counts,
             "seconds": round(seconds), "survivors": alive, "equivalent_mutants": []}
    return reclassify(module, entry)


def reclassify(module: str, entry: dict) -> dict:
    """The mutants left alive (survivors, no tests, those judged equivalent before) judged by the
    current rules: equivalent (with the rule's reason) or alive (with why, if known); the counts
    and the score follow. Run after a mutmut run, and alone (--reclassify) after a rule changes."""
    alive = entry["survivors"] + entry["equivalent_mutants"]
    survivors, equivalents = [], []
    for m in alive:
        reason = None if m.get("no tests") else equivalence(module, m["change"])
        if reason:
            equivalents.append({"mutant": m["mutant"], "change": m["change"], "reason": reason})
        else:
            survivors.append({k: v for k, v in m.items() if k != "reason"}
                             | {"why": equivalence(module, m["change"], KNOWN_SURVIVORS)})
    entry = {**entry, "survivors": sorted(survivors, key=lambda m: natural(m["mutant"])),
             "equivalent_mutants": sorted(equivalents, key=lambda m: natural(m["mutant"]))}
    entry["equivalent"] = len(equivalents)
    entry["survived"] = sum(not m.get("no tests") for m in survivors)
    judged = entry["mutants"] - entry["equivalent"]
    entry["score"] = round((entry["killed"] + entry["timeout"]) / judged, 4) if judged else float("nan")
    return entry


def natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def short(name: str) -> str:
    """pdiff_fast.io.x_save_json__mutmut_3 -> save_json #3"""
    func, _, n = name.rpartition("__mutmut_")
    return f"{func.rsplit('.', 1)[-1].removeprefix('x_').replace('ǁ', '.')} #{n}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="modules of tests/mutation/modules.py (default: all)")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--reclassify", action="store_true",
                    help="judge the stored survivors again by the current rules and rewrite the scores, no run")
    ap.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "pdiff_fast_mutation")
    args = ap.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"not in tests/mutation/modules.py: {unknown}; known: {sorted(MODULES)}")
    scores = load_results(SCORES)
    if args.reclassify:
        for module in args.modules or list(scores):
            scores[module] = reclassify(module, scores[module])
        save_results(SCORES, scores)
        write_docs(scores, load_results(PLANTED_RESULTS))
        return 0
    for module in args.modules or list(MODULES):
        result = run_module(module, MODULES[module], args.work_dir, args.max_children)
        scores[module] = result
        print(f"{module}: {result['mutants']} mutants, {result['killed'] + result['timeout']} killed, "
              f"{result['survived']} survived, {result['equivalent']} equivalent, score {100 * result['score']:.1f}% "
              f"({result['seconds']} s)", flush=True)
        save_results(SCORES, scores)
        write_docs(scores, load_results(PLANTED_RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared by the mutation runners (tests/mutation/__main__.py, planted.py): the work-folder copy
of the tree, the results files and the docs page made from them."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pdiff_fast.io import load_json, save_json, save_text

ROOT = Path(__file__).resolve().parents[2]
SCORES = ROOT / "tests" / "mutation" / "scores.json"
PLANTED_RESULTS = ROOT / "tests" / "mutation" / "planted.json"
DOCS = ROOT / "docs" / "mutation-scores.md"
TARGET = 0.90


def load_results(path: Path) -> dict:
    return load_json(path) if path.exists() else {}


def save_results(path: Path, data: dict) -> None:
    save_json(path, data)


def copy_tree(work: Path) -> None:
    """The tracked files and the built extension (mutmut copies what it mutates into mutants/)."""
    if work.exists():
        shutil.rmtree(work)
    # tracked files and new ones not ignored: what a commit of the working tree would hold
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    for ext in (ROOT / "pdiff_fast").glob("_C*.so"):
        shutil.copy2(ext, work / "pdiff_fast" / ext.name)


def unscored_modules(scores: dict) -> list[str]:
    """The package's Python modules with no score (every .py file of pdiff_fast/ but the __init__.py files:
    imports and re-exports)."""
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pdiff_fast").rglob("*.py") if p.name != "__init__.py")
    return [f for f in files if f not in scores]


def write_docs(scores: dict, planted: dict) -> None:
    lines = ["# Mutation scores", "",
             "Made by `.venv/bin/python -m tests.mutation` from `tests/mutation/scores.json`; what it does and",
             "how to read it: [Testing](testing.md). Score = (killed + timeout) / (mutants - equivalent): a mutant",
             "that no selected test reaches (no tests) counts as not killed;",
             f"the target is {TARGET:.0%}.", "",
             "| module | date | mutants | killed | timeout | survived | equivalent | no tests | score |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for module, s in sorted(scores.items()):
        lines.append(f"| `{module}` | {s['date']} | {s['mutants']} | {s['killed']} | {s['timeout']} | {s['survived']} "
                     f"| {s['equivalent']} | {s['no tests']} | {100 * s['score']:.1f}% |")
    unscored = unscored_modules(scores)
    lines += ["", f"{len(scores)} modules scored, {sum(s['mutants'] for s in scores.values())} mutants. "
              + (f"Not scored yet: {', '.join(f'`{m}`' for m in unscored)}." if unscored else
                 "Every module of the package is scored."),
              "The Triton kernels (`kernels/`) and the C++ code (`csrc/`) are out of mutmut's reach: their planted "
              "bugs are the last table."]
    for module, s in sorted(scores.items()):
        lines += ["", f"## `{module}`", "", f"Tests: {', '.join(f'`{t}`' for t in s['tests'])}.", ""]
        if s["survivors"]:
            lines += ["Survivors (not killed, not equivalent):", ""]
            lines += [f"- {m['mutant']}{' (no test reaches it)' if m.get('no tests') else ''}: `{m['change']}`"
                      + (f"; not killed yet: {m['why']}" if m.get("why") else "") for m in s["survivors"]]
            lines.append("")
        reasons: dict[str, list[str]] = {}
        for m in s["equivalent_mutants"]:
            reasons.setdefault(m["reason"], []).append(f"{m['mutant']} (`{m['change']}`)")
        for reason, mutants in reasons.items():
            lines += [f"Equivalent, {reason}:", ""] + [f"- {m}" for m in mutants] + [""]
    if planted:
        lines += ["", "## Planted in the kernels and the extension", "",
                  "Applied one at a time by `.venv/bin/python -m tests.mutation.planted` (tests/mutation/planted.py).", "",
                  "| # | file | bug | caught by | date |", "|---:|---|---|---|---|"]
        for i, r in sorted(planted.items(), key=lambda kv: int(kv[0])):
            caught = (", ".join(f"`{t}`" for t in r.get("first_failure", [])) if r["caught"]
                      else "**does not build**" if r["caught"] is None else "**not caught**")
            lines.append(f"| {i} | `{r['file']}` | {r['what']} | {caught} | {r['date']} |")
    save_text(DOCS, "\n".join(lines).rstrip() + "\n")

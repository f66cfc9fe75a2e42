"""The README and the docs cannot go stale: every ```python and ```bash block in README.md and
docs/**/*.md runs here, and the docs site builds with `mkdocs build --strict`.

How a page runs: its blocks run top to bottom in one fresh temporary directory (a later block may
use what an earlier one made, as a reader following the page would). Python blocks run each in its
own subprocess (`python block.py`), shell blocks with `bash -euo pipefail`. The directory holds
`.venv` (a link to the environment running the tests), so `.venv/bin/pdiff-fast` works as written,
and that environment's `bin/` leads PATH. Torch runs on one thread (`OMP_NUM_THREADS=1`): blocks
are small, and on a shared 2-core machine a second OpenMP thread only spins.

A block that must not run here (the full-size default run, the GPU install, the test suite itself,
anything taking minutes) says so on the line right before its fence:

    <!-- docs-test: skip (why) -->

The reason is required. The skips are counted and listed in the test output.

A table whose figures come from result files names them on the line before it:

    <!-- docs-test: numbers-from benchmarks/results/cpu.md benchmarks/results/nvidia-h100.md -->

and every number in that table must appear in one of those files (as text for .md files; for
.json files, any number of the file, or 100 times it, rounded to 0-6 decimals).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
RUN_LANGS = {"python", "bash"}
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->$")
NUMBERS_FROM = re.compile(r"^<!--\s*docs-test:\s*numbers-from\s+(?P<paths>[^>]+?)\s*-->$")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")
BLOCK_TIMEOUT_S = 240  # one block; the quick config's whole pipeline takes ~30 s on the CPU machine


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def previous_nonblank(lines: list[str], i: int) -> str:
    for j in range(i - 1, -1, -1):
        if lines[j].strip():
            return lines[j].strip()
    return ""


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of a page with its language and skip mark (fences inside fences are text)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group("fence"), m.group("info").lower(), i
        body, i = [], i + 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(m.group("indent")):])
            i += 1
        i += 1  # the closing fence
        mark = SKIP.match(previous_nonblank(lines, start))
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", mark.group("why").strip() if mark else None))
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN_LANGS]


def block_env(workdir: Path) -> dict:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PDIFF_FAST_BACKEND", None)
    env.pop("TRITON_INTERPRET", None)
    return env


def run_block(block: Block, workdir: Path, n: int) -> subprocess.CompletedProcess:
    env = block_env(workdir)
    if block.lang == "python":
        script = workdir / f"_docs_block_{n}.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, script.name]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


def test_pages_have_blocks_and_skips_are_reported(capsys):
    """Counts the blocks and lists every skipped one with its reason, in the normal test output."""
    skipped = [b for b in RUNNABLE if b.skip]
    lines = [f"docs: {len(RUNNABLE)} python/bash blocks in {len(PAGES)} pages: "
             f"{len(RUNNABLE) - len(skipped)} run, {len(skipped)} marked skip"]
    lines += [f"  skip {b.where} ({b.lang}): {b.skip}" for b in skipped]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert (ROOT / "docs" / "index.md").is_file()
    assert RUNNABLE, "no python or bash blocks found"
    assert len(skipped) < len(RUNNABLE) / 2, "most blocks are skipped: the docs are not being tested"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_blocks_run(page, tmp_path):
    """Every unmarked python/bash block of the page runs, in order, in one temporary directory."""
    blocks = [b for b in RUNNABLE if b.page == page]
    if not any(b.skip is None for b in blocks):
        pytest.skip(f"{page.relative_to(ROOT)}: no runnable blocks")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    for n, block in enumerate(blocks):
        if block.skip:
            continue
        try:
            result = run_block(block, tmp_path, n)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{block.where}: block ran past {BLOCK_TIMEOUT_S} s\n{block.code}\n{exc.stdout or ''}"
                        f"{exc.stderr or ''}")
        if result.returncode != 0:
            pytest.fail(f"{block.where}: {block.lang} block exited {result.returncode}\n--- block\n{block.code}"
                        f"--- stdout (tail)\n{result.stdout[-3000:]}\n--- stderr (tail)\n{result.stderr[-3000:]}")


def test_skip_marks_are_on_runnable_blocks_only():
    """A skip mark before a block that would not run anyway (json, text) is a mistake."""
    stray = [b.where for b in ALL_BLOCKS if b.skip and b.lang not in RUN_LANGS]
    assert not stray, f"skip marks on blocks that never run: {stray}"


def test_untagged_fences_do_not_hide_code():
    """Shell and Python go in ```bash / ```python blocks, so that they run here."""
    bad = [b.where for b in ALL_BLOCKS if b.lang in ("", "sh", "shell", "console", "py", "python3")]
    assert not bad, f"code blocks without a runnable tag (use ```bash or ```python, or ```text): {bad}"


# --- the README as the front door -----------------------------------------------------------------
README = (ROOT / "README.md").read_text(encoding="utf-8")
TWO_COMMANDS = [
    "bash .ci/setup && .venv/bin/pdiff-fast run --run-dir runs/default",
    "bash .ci/setup && .venv/bin/python -m pytest tests/ -q",  # .ci/run runs this command
]


def test_readme_is_a_front_door():
    lines = README.splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; keep it about 150 and move detail to docs/"
    for command in TWO_COMMANDS:
        assert command in README, f"the README lost the command {command!r}"
    assert ".venv/bin/python -m pytest tests/ -q" in (ROOT / ".ci" / "run").read_text(), \
        ".ci/run no longer runs the README's test command"


HASH = re.compile(r"\b(?:commit|at|clone at)\s+(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")
ISSUE = re.compile(r"\bissue[s]?\s*#?\d+", re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_commit_hashes_or_internal_issue_numbers(page):
    text = page.read_text(encoding="utf-8")
    assert not HASH.findall(text), f"{page.name}: commit hashes belong in CHANGELOG.md: {HASH.findall(text)}"
    assert not ISSUE.findall(text), f"{page.name}: internal issue numbers: {ISSUE.findall(text)}"


# --- figures come from committed result files ------------------------------------------------------
NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def json_numbers(path: Path) -> set[str]:
    found: set[str] = set()

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            for d in range(7):
                found.add(f"{v:.{d}f}")
                found.add(f"{100 * v:.{d}f}")  # a share printed as a percentage
            found.add(str(v))
    walk(json.loads(path.read_text(encoding="utf-8")))
    return found


def tables_with_sources(page: Path):
    lines = page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        m = NUMBERS_FROM.match(line.strip())
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        rows = []
        while j < len(lines) and lines[j].strip().startswith("|"):
            rows.append(lines[j])
            j += 1
        yield i + 1, m.group("paths").split(), rows


SOURCED = [(page, line, paths, rows) for page in PAGES for line, paths, rows in tables_with_sources(page)]


def test_the_readme_tables_name_their_sources():
    assert sum(1 for s in SOURCED if s[0].name == "README.md") >= 2, "the README's two tables need numbers-from marks"


@pytest.mark.parametrize("page,line,paths,rows", SOURCED,
                         ids=[f"{s[0].relative_to(ROOT)}:{s[1]}" for s in SOURCED])
def test_table_figures_come_from_result_files(page, line, paths, rows):
    assert rows, f"{page.name}:{line}: numbers-from mark without a table after it"
    texts, numbers = [], set()
    for p in paths:
        f = ROOT / p
        assert f.is_file(), f"{page.name}:{line}: {p} is not a committed file"
        texts.append(f.read_text(encoding="utf-8"))
        if f.suffix == ".json":
            numbers |= json_numbers(f)
    missing = []
    for row in rows[2:]:  # past the header and the |---| line
        for cell in row.strip().strip("|").split("|")[1:]:  # the first cell names the row
            for num in NUMBER.findall(cell):
                plain = num.replace(",", "")
                if num in numbers or plain in numbers or any(num in t or plain in t for t in texts):
                    continue
                missing.append(f"{num} (in {cell.strip()!r})")
    assert not missing, f"{page.name}:{line}: figures not found in {paths}: {missing}"


# --- the site ----------------------------------------------------------------------------------
def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: a broken link, a missing page or an API name that moved fails."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (.ci/setup installs it)")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (.ci/setup installs it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (.ci/setup installs it)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert (tmp_path / "site" / "index.html").is_file()

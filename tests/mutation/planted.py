"""Hand-planted bugs in the Triton kernels and the C++ extension, which a generic mutation tool
does not reach (mutmut mutates Python functions it can call through trampolines; a @triton.jit
body runs in the interpreter, C++ needs a build). Each is a small, plausible slip; the script
applies one at a time to a copy of the tree, rebuilds the extension when a C++ file changed,
runs the tests named for it and expects them to fail.

    .venv/bin/python -m tests.mutation.planted            # all of them (~10 minutes, two builds)
    .venv/bin/python -m tests.mutation.planted 0 3        # by index

The outcome goes to tests/mutation/planted.json and docs/mutation-scores.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .common import PLANTED_RESULTS as RESULTS, SCORES, copy_tree, load_results, save_results, write_docs


@dataclass(frozen=True)
class Planted:
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


PLANTED = [
    Planted("kernels/solver_step.py", "x0 = (x - b * eps) / a", "x0 = (x + b * eps) / a",
            ("tests/kernels/test_solver_step.py",), "few-step x0: the sign of the eps term"),
    Planted("kernels/solver_step.py", "out += c1 * tl.load(prev_ptr", "out -= c1 * tl.load(prev_ptr",
            ("tests/kernels/test_solver_step.py",), "few-step: the second-order term subtracted"),
    Planted("kernels/ddpm_step.py", "tl.where(t > 0, tl.exp(0.5 * logvar), 0.0)",
            "tl.where(t >= 0, tl.exp(0.5 * logvar), 0.0)",
            ("tests/kernels/test_ddpm_step.py",), "DDPM: noise added at t == 0 too"),
    Planted("kernels/ddpm_step.py", "mean = c_mean1 * x0 + c_mean2 * x", "mean = c_mean2 * x0 + c_mean1 * x",
            ("tests/kernels/test_ddpm_step.py",), "DDPM: the posterior mean's coefficients swapped"),
    Planted("kernels/q_sample.py", "c_noise = tl.load(coefs_ptr + T + t, mask=row_ok, other=0.0)[:, None]\n\n    x0",
            "c_noise = tl.load(coefs_ptr + t, mask=row_ok, other=0.0)[:, None]\n\n    x0",
            ("tests/kernels/test_q_sample.py",), "q_sample: the noise scale read from the signal table"),
    Planted("kernels/tiles.py", "mask = row_ok[:, None] & (cols < M)[None, :]", "mask = row_ok[:, None] & (cols <= M)[None, :]",
            ("tests/kernels/test_ddim_step.py",), "tile mask: one column past the row's end"),
    Planted("kernels/noise.py", "mix = (seed_offset.to(tl.uint64) * GOLDEN) & 0xFFFFFFFF",
            "mix = (seed_offset.to(tl.uint64) * 0) & 0xFFFFFFFF",
            ("tests/kernels/test_noise.py", "tests/kernels/test_ddpm_step.py"), "in-kernel noise: seed_offset ignored"),
    Planted("csrc/cpu/popcount_iou_cpu.cpp", "uni == 0 ? 1.0f :", "uni == 0 ? 0.0f :",
            ("tests/ops/test_iou_matrix.py",), "IoU of two empty sets 0 instead of 1"),
    Planted("csrc/cpu/popcount_iou_cpu.cpp", "if (k < bytes) count +=", "if (k + 1 < bytes) count +=",
            ("tests/ops/test_iou_matrix.py",), "IoU: a one-byte tail of the bitset not counted"),
]


def run_one(index: int, p: Planted, work: Path) -> dict:
    copy_tree(work)
    # the editable install maps pdiff_fast.kernels to the checkout's kernels/: point it at the copy's
    (work / "pdiff_fast" / "kernels").symlink_to(Path("..") / "kernels")
    path = work / p.file
    text = path.read_text()
    if text.count(p.old) != 1:
        raise SystemExit(f"planted #{index}: {p.old!r} occurs {text.count(p.old)} times in {p.file}, not once")
    path.write_text(text.replace(p.old, p.new))
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    if p.file.startswith("csrc/"):
        build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=work, env=env,
                               capture_output=True, text=True)
        if build.returncode != 0:
            return {"index": index, "file": p.file, "what": p.what, "caught": None,
                    "note": "does not build: " + build.stderr[-500:]}
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *p.tests],
                          cwd=work, env=env, capture_output=True, text=True)
    failed = [line.split(" ")[1] for line in test.stdout.splitlines() if line.startswith("FAILED ")]
    if test.returncode not in (0, 1):  # the bug crashed the test process (e.g. a write past a buffer)
        failed = failed[:1] + [f"the test run itself (exit code {test.returncode})"]
    return {"index": index, "file": p.file, "change": f"{p.old} => {p.new}", "what": p.what,
            "tests": list(p.tests), "caught": test.returncode != 0, "first_failure": failed[:1],
            "exit_code": test.returncode, "seconds": round(time.perf_counter() - started)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("indices", nargs="*", type=int)
    ap.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "pdiff_fast_planted")
    args = ap.parse_args(argv)
    results = load_results(RESULTS)
    for i in args.indices or range(len(PLANTED)):
        r = run_one(i, PLANTED[i], args.work_dir)
        r["date"] = datetime.date.today().isoformat()
        results[str(i)] = r
        print(f"#{i} {PLANTED[i].what}: {'caught' if r['caught'] else 'NOT CAUGHT'} {r.get('first_failure', '')}",
              flush=True)
        save_results(RESULTS, results)
    write_docs(load_results(SCORES), results)
    return 0 if all(r["caught"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

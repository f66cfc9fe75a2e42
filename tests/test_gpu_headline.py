"""The GPU window's headline command (benchmarks/gpu_headline.sh, .py), rehearsed on the CPU: its
time boxes and deadline, a full tiny run's files and final table, and a kill that still leaves a
current summary.md. The run uses eager torch.compile (dynamo without inductor: a cold inductor
compile takes minutes on 2 cores) and leaves out the slow steps, to stay near 30 s of CPU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_headline as gh

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHON=sys.executable, PDIFF_HEADLINE_REHEARSAL="1", PDIFF_HEADLINE_COMPILE_BACKEND="eager",
               PDIFF_HEADLINE_TESTS="")
    env.update(extra)
    return env


def _summary_ok(out: Path) -> str:
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and set(files) <= set(gh.OUT_FILES), files
    summary = (out / "summary.md").read_text()
    assert "REHEARSAL on a CPU: no figure here is a GPU figure" in summary
    json.loads((out / "headline.json").read_text())
    return summary


def test_time_boxes_deadline_and_failures(tmp_path, monkeypatch):
    """In-process, with stand-in phases: a phase past its box is cut (TIMEOUT), a failing one is
    recorded and the next still runs, one that the deadline leaves too little time is skipped."""
    monkeypatch.setenv("PDIFF_HEADLINE_REHEARSAL", "1")
    monkeypatch.delenv("PDIFF_HEADLINE_SKIP", raising=False)

    def setup(ctx):
        ctx.s = object()
        ctx.st.row(target="decode", peer="auto", time_s=0.5, per="call")
        return "stand-in"

    def slow(ctx):
        time.sleep(30)

    def fail(ctx):
        raise ValueError("planted")

    monkeypatch.setattr(gh, "PHASES", (("setup", setup, 5, 1), ("slow", slow, 1, 1), ("fail", fail, 5, 1),
                                       ("late", setup, 5, 1000)))
    threads = torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    try:
        t0 = time.time()
        rc = gh.main(["run", str(tmp_path), "--deadline", str(time.time() + 2000), "--scratch", str(tmp_path)])
        assert time.time() - t0 < 10
    finally:
        torch.set_num_threads(threads)
        for s, h in handlers.items():
            signal.signal(s, h)
    assert rc == 1  # the failure
    status = {p["name"]: (p["status"], p["note"]) for p in json.loads((tmp_path / "headline.json").read_text())["phases"]}
    assert status["setup"][0] == "ok" and status["slow"][0] == "TIMEOUT" and status["late"] == ("skipped", "no time left")
    assert status["fail"][0] == "FAILED" and "planted" in status["fail"][1]
    summary = _summary_ok(tmp_path)
    assert "| decode | auto | 500.00 ms |" in summary and "no verdict (not a GPU)" in summary


def test_verdicts_on_gpu_rows():
    """The targets of issue 23 read off the rows (as a GPU run would record them)."""
    rows = [("sample_step", "auto (CUDA graph)", 0.4e-3), ("sample_step", "torch.compile", 1.0e-3),
            ("e2e", "auto", 1.2), ("decode", "auto", 4e-3), ("decode", "torch.compile", 4.1e-3),
            ("population", "auto (batched)", 0.02), ("population", "one-by-one loop", 0.35),
            ("train_ae", "auto", 1.0), ("train_ae", "torch eager", 0.5)]
    d = {"mode": "gpu", "rows": [{"target": t, "peer": p, "time_s": s} for t, p, s in rows]}
    v = {t: verdict for t, _, verdict in gh.verdicts(d)}
    assert v["sample_step"].startswith("MET") and v["e2e"].startswith("MISSED") and v["decode"].startswith("MET")
    assert v["population"].startswith("MET") and v["train_ae"].startswith("MISSED") and v["train_den"] == "no data"


def test_rehearsal_runs_every_phase_and_prints_the_table_last(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", "benchmarks/gpu_headline.sh", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env=_env(PDIFF_HEADLINE_SKIP="env cold_compile memcheck"), timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = _summary_ok(out)
    phases = {p["name"]: p["status"] for p in json.loads((out / "headline.json").read_text())["phases"]}
    for name in ("setup", "spot", "cold_pdiff", "sample_step", "e2e", "decode", "population", "train", "profile"):
        assert phases[name] == "ok", (name, summary)
    assert phases["cold_compile"] == "skipped" and phases["build"] == "skipped"
    assert "## Spot checks (12 of 12 within tolerance)" in summary
    assert "REHEARSAL" in (out / "profile.txt").read_text().splitlines()[0]
    tail = done.stdout.strip().splitlines()
    assert any("HEADLINE REHEARSAL on a CPU (no GPU figures)" in line for line in tail[-40:])
    assert tail[-1].startswith("| cold |")  # the final table is the last thing printed


def test_a_kill_leaves_a_current_summary(tmp_path):
    """SIGTERM to the command while a cold start runs: the running phase is marked KILLED, what
    was measured before stays, and the table is still printed."""
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", "benchmarks/gpu_headline.sh", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(PDIFF_HEADLINE_SKIP="env"))
    state = out / "headline.json"
    t0 = time.time()
    try:
        while time.time() - t0 < 120:
            phases = json.loads(state.read_text())["phases"] if state.is_file() else []
            if any(p["name"] == "cold_pdiff" and p["status"] == "running" for p in phases):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the cold start never began")
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stdout[-3000:]
    summary = _summary_ok(out)
    phases = {p["name"]: p["status"] for p in json.loads(state.read_text())["phases"]}
    assert phases["spot"] == "ok" and phases["cold_pdiff"] == "KILLED", phases
    assert "| cold_pdiff | KILLED |" in summary and "act_norm_conv1d (conv)" in summary
    assert "HEADLINE REHEARSAL" in stdout

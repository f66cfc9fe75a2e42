"""benchmarks/subset_scaling.py at tiny sizes (K = 8, D = 100 / 500 / 1000, 2 timed steps): a
worker subprocess's JSON line, every phase's fields through collect() (the parent loop, with an
in-process runner), and the Markdown tables with `small` not run above D = 500."""
from __future__ import annotations

import argparse

import pytest

from benchmarks import subset_scaling as ss

COMMON = {"phase", "preset", "d", "k", "auto", "threads", "status", "latent_shape", "peak_rss_kib"}
TRAIN = {"step_s", "step_s_mean", "step_s_min", "step_s_all", "steps_timed", "warmup_call_s"}
FIELDS = {
    "ae": COMMON | TRAIN | {"init_s", "init_warmup_s", "population_mib", "ae_params"},
    "denoiser": COMMON | TRAIN | {"denoiser_params"},
    "sample": COMMON | {"step_s", "sample_s", "loop_s", "loop_steps", "decode_s", "call_s", "extrapolated", "grain",
                        "decode_calls", "denoiser_calls_per_step"},
}


def _args(**kw) -> argparse.Namespace:
    base = dict(k=8, budget=0.0, min_steps=2, steps=2, sample_steps=2, threads=1, timeout=300,
                dims=[100, 500, 1000], presets=["small", "lowrank"], small_max_d=500, repeats=2)
    return argparse.Namespace(**{**base, **kw})


def _check(rec: dict, phase: str, preset: str, d: int) -> None:
    assert rec["status"] == "ok"
    assert FIELDS[phase] <= set(rec), FIELDS[phase] - set(rec)
    assert (rec["phase"], rec["preset"], rec["d"], rec["k"]) == (phase, preset, d, 8)
    assert rec["peak_rss_kib"] > 0
    if phase in ("ae", "denoiser"):
        assert rec["steps_timed"] == 2 and len(rec["step_s_all"]) == 2 and rec["step_s"] > 0
    if phase == "ae":
        assert (rec["init_s"] is not None) == (preset == "lowrank")
        assert rec["population_mib"] == pytest.approx(8 * d * 4 / 2**20)
    if phase == "sample":
        assert rec["loop_steps"] == 2 and rec["extrapolated"]
        assert len(rec["loop_s_all"]) == 2 and rec["loop_s"] == pytest.approx(min(rec["loop_s_all"]))
        assert rec["sample_s"] == pytest.approx(rec["loop_s"] * 500 + rec["decode_s"])
        assert rec["grain"] * rec["denoiser_calls_per_step"] >= 8


def test_worker_subprocess_json():
    rec = ss.run_subprocess("ae", "lowrank", 500, _args())
    _check(rec, "ae", "lowrank", 500)
    assert rec["threads"] == 1 and rec["latent_shape"] == [1, 64] and rec["init_s"] > 0


def _in_process(phase, preset, d, args):
    return ss.measure(phase, preset, d, args.k, budget=args.budget, min_steps=args.min_steps,
                      max_steps=args.steps, sample_steps=args.sample_steps, repeats=args.repeats)


@pytest.mark.usefixtures("one_thread")
def test_collect_and_markdown():
    args = _args()
    base, records = ss.collect(args, runner=_in_process, log=lambda *a: None)
    assert base > 0
    assert len(records) == 3 * 2 * 3
    for r in records:
        if r["preset"] == "small" and r["d"] == 1000:
            assert r["status"] == "not run"
            est = r["estimate"]
            assert est["from_d"] == [100, 500]
            key = ss._key(r["phase"])
            a, b = (ss._find(records, r["phase"], "small", d) for d in (100, 500))
            assert est[key] == pytest.approx(max(b[key], b[key] + (b[key] - a[key]) * 500 / 400))
            assert (key in est["floored"]) == (b[key] < a[key])
        else:
            _check(r, r["phase"], r["preset"], r["d"])
            assert "peak_mib" in r
    assert ss._find(records, "ae", "small", 500)["auto"] == "small"
    assert ss._find(records, "denoiser", "small", 500)["latent_shape"] == [2, 7]

    md = ss.markdown(ss.meta_for(args, base, 0.0), records)
    for title in ss.PHASE_TITLES.values():
        assert f"## {title}" in md
    assert md.count("| D | auto |") == 3
    rows = [line for line in md.splitlines() if line.startswith("| 1,000 |")]
    assert len(rows) == 3 and all("not run (est. " in row for row in rows)
    assert "lowrank init (SVD) s" in md and "small init (SVD) s" not in md
    assert "## What the numbers show" in md and "Not run, estimated `small`" in md
    # lowrank's latent (1 x 64) does not change with D: its denoiser phases do the same work at every D
    assert "Run-to-run noise: `lowrank` latent denoiser training does the same work at D = 100, 500, 1,000" in md


def test_estimate_line_and_floor():
    """A rising line is extended; a falling one is floored at the largest measured value (shown '>=')."""
    def rec(d, t, mib):
        return {"phase": "sample", "preset": "small", "d": d, "status": "ok", "sample_s": t, "peak_mib": mib}

    records = [rec(10, 1.0, 300.0), rec(20, 2.0, 200.0),
               {"phase": "sample", "preset": "small", "d": 40, "status": "not run"}]
    ss.estimate_not_run(records)
    est = records[-1]["estimate"]
    assert est["sample_s"] == pytest.approx(4.0) and est["peak_mib"] == 200.0 and est["floored"] == ["peak_mib"]
    cells = ss._cells(records, records[-1], ["sample_s", "slope", "peak_mib"])
    assert cells == ["not run (est. 4)", "not run", "not run (est. >= 200)"]

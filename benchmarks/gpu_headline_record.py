"""The record of the GPU window's headline run (benchmarks/gpu_headline.py): headline.json is the one
record, summary.md and the final table are rendered from it, and the goals each target is judged by."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

# The files the headline command may leave in OUT (the run tool returns at most 8; a save's
# temporary file is the eighth for a moment)
OUT_FILES = ("summary.md", "headline.json", "env.txt", "build.log", "profile.txt", "tests.txt", "memcheck.txt")
TOP = 15  # profiler rows

# goals of issue 23 ("Then on a GPU"), checked only on a GPU
GOALS = {
    "sample_step": "auto <= 0.5 ms/step and >= 2x torch.compile",
    "e2e": "< 1 s for N models x every step + decode + unflatten",
    "decode": "auto <= torch.compile",
    "population": "batched >= 10x the one-by-one loop",
    "train_ae": "auto <= torch eager",
    "train_den": "auto <= torch eager",
    "cold": "reported (no goal)",
}


class PhaseTimeout(Exception):
    pass


class Killed(BaseException):  # not an Exception: no phase's `except Exception` may swallow it
    pass


# --- state: headline.json is the one record; summary.md is rendered from it -------------------------

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class State:
    def __init__(self, out: Path, data: dict):
        self.out, self.d = out, data

    @classmethod
    def load(cls, out: Path) -> "State":
        path = out / "headline.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("phases", [])
        data.setdefault("spot", [])
        data.setdefault("rows", [])
        data.setdefault("info", {})
        return cls(out, data)

    def save(self) -> None:
        # a signal arriving mid-write must not leave a half summary: block them for the write
        blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGALRM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            _atomic_write(self.out / "headline.json", json.dumps(self.d, indent=1, default=str))
            _atomic_write(self.out / "summary.md", render_summary(self.d))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def phase(self, name: str, **fields) -> dict:
        """The phase's entry, replaced in place when the name is already there."""
        entry = {"name": name, **fields}
        for i, p in enumerate(self.d["phases"]):
            if p["name"] == name:
                self.d["phases"][i] = entry
                return entry
        self.d["phases"].append(entry)
        return entry

    def row(self, **fields) -> None:
        self.d["rows"].append(fields)
        self.save()


def _ms(s) -> str:
    if s is None:
        return "—"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _rows(d: dict, target: str) -> dict:
    return {r["peer"]: r for r in d["rows"] if r["target"] == target and r.get("time_s") is not None}


def verdicts(d: dict) -> list[tuple[str, str, str]]:
    """(target, measured summary, verdict) per headline target; no verdict without a GPU."""
    gpu = d.get("mode") == "gpu"
    out = []

    def verdict(ok: bool | None, how: str) -> str:
        if not gpu:
            return "no verdict (not a GPU)"
        return "no data" if ok is None else (("MET " if ok else "MISSED ") + how)

    r = _rows(d, "sample_step")
    a, c = r.get("auto (CUDA graph)") or r.get("auto"), r.get("torch.compile")
    ok = None
    how = ""
    if a:
        speed = c["time_s"] / a["time_s"] if c else None
        ok = a["time_s"] <= 0.5e-3 and (speed is None or speed >= 2)
        how = f"{_ms(a['time_s'])}/step, {speed:.2f}x compile" if speed else f"{_ms(a['time_s'])}/step"
    out.append(("sample_step", how, verdict(ok, GOALS["sample_step"])))
    r = _rows(d, "e2e")
    a = r.get("auto")
    out.append(("e2e", _ms(a["time_s"]) if a else "", verdict(None if not a else a["time_s"] < 1.0, GOALS["e2e"])))
    for target, peer in (("decode", "torch.compile"), ("train_ae", "torch eager"), ("train_den", "torch eager")):
        r = _rows(d, target)
        a, p = r.get("auto"), r.get(peer)
        ok = None if not (a and p) else a["time_s"] <= p["time_s"] * 1.05  # 5%: two timings' spread
        how = f"{p['time_s'] / a['time_s']:.2f}x {peer}" if a and p else ""
        out.append((target, how, verdict(ok, GOALS[target])))
    r = _rows(d, "population")
    a, p = r.get("auto (batched)"), r.get("one-by-one loop")
    ok = None if not (a and p) else p["time_s"] / a["time_s"] >= 10
    out.append(("population", f"{p['time_s'] / a['time_s']:.2f}x the loop" if a and p else "",
                verdict(ok, GOALS["population"])))
    r = _rows(d, "cold")
    out.append(("cold", ", ".join(f"{k} {_ms(v['time_s'])}" for k, v in r.items()), "reported"))
    return out


def render_table(d: dict) -> str:
    """The measured rows, one line each, with the floor where there is one."""
    lines = ["| target | peer | time | per | floor | % of floor | note |", "|---|---|---:|---|---:|---:|---|"]
    for r in d["rows"]:
        floor = r.get("floor_s")
        t = r.get("time_s")
        pct = f"{100 * floor / t:.0f}%" if floor and t else "—"
        lines.append(f"| {r['target']} | {r['peer']} | {_ms(t) if t is not None else 'not measured'} | "
                     f"{r.get('per', 'call')} | {_ms(floor)} | {pct} | {r.get('note', '')} |")
    return "\n".join(lines)


def render_summary(d: dict) -> str:
    gpu = d.get("mode") == "gpu"
    head = "GPU run" if gpu else "REHEARSAL on a CPU: no figure here is a GPU figure"
    info = d.get("info", {})
    lines = [f"# gpu_headline: {head}", "",
             f"device: {info.get('device', d.get('device', 'unknown'))}; commit {d.get('commit', '?')}; "
             f"torch {info.get('torch', '?')}, triton {info.get('triton', '?')}; started {d.get('started_utc', '?')}, "
             f"updated {time.strftime('%H:%M:%S', time.gmtime())} UTC", ""]
    if info.get("hardware"):
        hw = info["hardware"]
        lines += [f"measured here: copy {hw['hw_copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write), matmul fp32 "
                  f"{hw['hw_matmul_fp32_flops_per_s'] / 1e12:.1f} TFLOP/s, TF32 "
                  f"{hw['hw_matmul_tf32_flops_per_s'] / 1e12:.1f} TFLOP/s (the floor's rates)", ""]
    if info.get("sizes"):
        lines += [f"sizes: {info['sizes']}", ""]
    if info.get("auto_backends"):
        lines += [f"auto picks: {info['auto_backends']}", ""]
    lines += ["## Phases", "", "| phase | status | seconds | budget | note |", "|---|---|---:|---:|---|"]
    for p in d["phases"]:
        lines.append(f"| {p['name']} | {p.get('status', '?')} | {p.get('seconds', '')} | {p.get('budget', '')} | "
                     f"{str(p.get('note', '')).replace('|', '/')[:200]} |")
    if d["spot"]:
        bad = [s for s in d["spot"] if not s.get("ok")]
        lines += ["", f"## Spot checks ({len(d['spot']) - len(bad)} of {len(d['spot'])} within tolerance)", "",
                  "| op | backend | max abs err | rel err | tolerance | ok |", "|---|---|---:|---:|---:|---|"]
        for s in d["spot"]:
            lines.append(f"| {s['op']} | {s.get('backend', '')} | {s.get('max_abs', '—')} | {s.get('rel', '—')} | "
                         f"{s.get('tol', '')} | {'yes' if s.get('ok') else 'NO'} {s.get('note', '')} |")
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in verdicts(d)]
    lines += ["", "## Timings (median of the reps; floor = max(FLOPs / TF32 rate, fewest bytes / copy rate))", "",
              render_table(d), ""]
    return "\n".join(lines)


def final_table(d: dict) -> str:
    """What the shell prints last: it is what the run tool's output tail surely holds."""
    gpu = d.get("mode") == "gpu"
    info = d.get("info", {})
    lines = ["=" * 100,
             f"HEADLINE {'on ' + str(info.get('device')) if gpu else 'REHEARSAL on a CPU (no GPU figures)'} "
             f"commit {d.get('commit', '?')}",
             "phases: " + "; ".join(f"{p['name']} {p.get('status')} {p.get('seconds', '')}s" for p in d["phases"])]
    if d["spot"]:
        bad = [s["op"] for s in d["spot"] if not s.get("ok")]
        worst = max((s.get("rel") or 0) for s in d["spot"])
        lines.append(f"spot checks: {len(d['spot']) - len(bad)}/{len(d['spot'])} ok, worst rel err {worst:.2e}"
                     + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    lines += [render_table(d), "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in verdicts(d)]
    return "\n".join(lines)

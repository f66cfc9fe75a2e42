"""Turn a pytest-benchmark JSON file (--benchmark-json) into a markdown table of ratios.

    python benchmarks/report.py benchmarks/results/cpu.json               # markdown to stdout
    python benchmarks/report.py benchmarks/results/cpu.json -o benchmarks/results/cpu.md

One table per stage (the group name up to its first "/", or extra_info["stage"]); one row per
group; one column per peer (extra_info["peer"], else the test's parametrised peer/impl/backend,
else its id). Every cell is the time of one timed call and, in brackets, that peer's time
divided by the baseline's in the same group: above 1 means the baseline is faster. The
baseline is pdiff_fast's automatic backend (peer "auto"); a group without one uses its first
peer and says so. Groups written by any benchmark file are included, whatever their peers.
The statistic is the fastest round by default (--stat median for the median).

On a GPU run (extra_info carries hw_copy_bytes_per_s and hw_matmul_*_flops_per_s, measured in the
same run) the "% floor" column is floor / time for the baseline, where floor = max(flops /
best matmul rate, bytes_min / copy bandwidth) (benchmarks/README.md, "Hardware floor"). A CPU
run has no floor columns: there is no measured bandwidth or FLOP rate to divide by.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

PEER_ORDER = ("auto", "triton", "graph", "torch", "compile", "reference")
PEER_NAMES = {"auto": "pdiff_fast (auto)", "triton": "pdiff_fast (triton)", "graph": "pdiff_fast (CUDA graph)",
              "torch": "pdiff_fast (torch)",
              "compile": "torch.compile", "reference": "reference loop"}
SIZE_KEYS = ("N", "K", "n", "k", "batch", "D")
STAGE_ORDER = ("ae_train", "den_train", "sample_ddpm", "sample_ddim", "decode_unflatten")


def fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale or unit == "µs":
            return f"{s / scale:.3g} {unit}"
    return f"{s:.3g} s"


def peer_of(bench: dict) -> str:
    info, params = bench.get("extra_info") or {}, bench.get("params") or {}
    if info.get("peer"):
        return str(info["peer"])
    for key in ("peer", "impl", "implementation", "backend", "variant", "method"):
        if key in params:
            return str(params[key])
    name = bench.get("name", "")
    return name[name.find("[") + 1:-1] if "[" in name else name


def stage_of(bench: dict) -> str:
    info = bench.get("extra_info") or {}
    group = bench.get("group") or bench.get("name", "")
    return str(info.get("stage") or group.split("/")[0].split("[")[0].strip() or group)


def size_of(bench: dict) -> str:
    info, params = bench.get("extra_info") or {}, bench.get("params") or {}
    for key in SIZE_KEYS[:-1]:
        if key in info:
            return f"{key}={info[key]}"
        if key in params:
            return f"{key}={params[key]}"
    return ""


def _order(bench: dict):
    info = bench.get("extra_info") or {}
    size = next((info[k] for k in SIZE_KEYS[:-1] if isinstance(info.get(k), (int, float))), 0)
    return str(info.get("config", "")), "quick" in (bench.get("group") or ""), size, bench.get("group") or ""


def baseline_of(rows: dict[str, dict]) -> tuple[str, bool]:
    if "auto" in rows:
        return "auto", True
    for peer in rows:
        if "auto" in peer:
            return peer, True
    return next(iter(rows)), False


def floor_s(bench: dict, hw: dict) -> float | None:
    info = bench.get("extra_info") or {}
    bw = info.get("hw_copy_bytes_per_s") or hw.get("hw_copy_bytes_per_s")
    rates = [info.get(k) or hw.get(k) for k in ("hw_matmul_fp32_flops_per_s", "hw_matmul_tf32_flops_per_s")]
    rates = [r for r in rates if r]
    if not bw or not rates or "flops" not in info or "bytes_min" not in info:
        return None
    return max(info["flops"] / max(rates), info["bytes_min"] / bw)


def header(data: dict, stat: str) -> list[str]:
    env = (data.get("pdiff_fast") or {}).get("environment") or (data.get("machine_info") or {}).get("pdiff_fast") or {}
    hw = (data.get("pdiff_fast") or {}).get("hardware") or {}
    commit = data.get("commit_info") or {}
    device = env.get("cuda_device") or f"CPU {env.get('cpu_model', '?')}"
    lines = [f"# pdiff_fast throughput: {device}", "",
             f"- run: {data.get('datetime', '?')}, mode `{env.get('mode', '?')}`, "
             f"commit `{str(commit.get('id', '?'))[:10]}`{' (dirty tree)' if commit.get('dirty') else ''}",
             f"- machine: CPU {env.get('cpu_model', '?')}, {env.get('cpu_cores', '?')} cores, torch threads "
             f"{env.get('torch_threads', '?')}; GPU: {env.get('cuda_device') or 'none'}",
             f"- software: torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
             f"python {env.get('python', '?')}, pdiff_fast {env.get('pdiff_fast', '?')}"]
    if hw:
        lines.append(f"- measured in this run on {hw.get('hw_device')}: device copy "
                     f"{hw['hw_copy_bytes_per_s'] / 1e9:.0f} GB/s, matmul fp32 "
                     f"{hw['hw_matmul_fp32_flops_per_s'] / 1e12:.1f} TFLOP/s, TF32 "
                     f"{hw['hw_matmul_tf32_flops_per_s'] / 1e12:.1f} TFLOP/s")
    else:
        lines.append("- no hardware-floor columns: this run had no CUDA device, and the floor needs the "
                     "bandwidth and FLOP rate measured on a GPU in the same run")
    what = {"min": "fastest round (the one least disturbed by other processes)", "median": "median round"}
    lines += ["", f"Cells: time of one timed call, {what.get(stat, stat)}; (×r) = that peer's time / pdiff_fast "
              "auto's in the same group, above 1: pdiff_fast auto is faster. Absolute times hold only for this "
              "machine.", ""]
    return lines


def stage_table(stage: str, groups: dict[str, list[dict]], hw: dict, stat: str) -> list[str]:
    peers: list[str] = []
    for benches in groups.values():
        for b in benches:
            p = peer_of(b)
            if p not in peers:
                peers.append(p)
    peers.sort(key=lambda p: (PEER_ORDER.index(p) if p in PEER_ORDER else len(PEER_ORDER), p))
    any_steps = any((b.get("extra_info") or {}).get("steps_run") for bs in groups.values() for b in bs)
    any_flops = any((b.get("extra_info") or {}).get("flops") for bs in groups.values() for b in bs)
    any_floor = any(floor_s(b, hw) for bs in groups.values() for b in bs)
    cols = ["group", "size", "D"] + [PEER_NAMES.get(p, p) for p in peers]
    cols += ["per step (auto)"] if any_steps else []
    cols += ["GFLOP/s (auto)"] if any_flops else []
    cols += ["% floor (auto)"] if any_floor else []
    lines = [f"## {stage}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * 3 + "---:|" * (len(cols) - 3)]
    notes = []
    for group, benches in sorted(groups.items(), key=lambda kv: _order(kv[1][0])):
        rows = {peer_of(b): b for b in benches}
        base, is_auto = baseline_of(rows)
        if not is_auto:
            notes.append(f"`{group}` has no pdiff_fast auto peer; ratios are against `{base}`.")
        b0 = rows[base]
        t0 = b0["stats"][stat]
        info = b0.get("extra_info") or {}
        cells = [f"`{group}`", size_of(b0), str(info.get("D", ""))]
        for p in peers:
            if p not in rows:
                cells.append("—")
            elif p == base:
                cells.append(f"**{fmt_time(t0)}**")
            else:
                t = rows[p]["stats"][stat]
                cells.append(f"{fmt_time(t)} (×{t / t0:.2f})")
        if any_steps:
            cells.append(fmt_time(t0 / info["steps_run"]) if info.get("steps_run") else "")
        if any_flops:
            cells.append(f"{info['flops'] / t0 / 1e9:.1f}" if info.get("flops") else "")
        if any_floor:
            f = floor_s(b0, hw)
            cells.append(f"{100 * f / t0:.3g} %" if f else "")
        lines.append("| " + " | ".join(cells) + " |")
    timed = {(b.get("extra_info") or {}).get("timed") for bs in groups.values() for b in bs
             if peer_of(b) == "auto"} - {None}
    if len(timed) == 1:
        notes.append(f"Timed call: {timed.pop()}.")
    lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return lines


def compile_times(benches: list[dict]) -> list[str]:
    rows = [(b["group"], b["extra_info"]["compile_s"]) for b in benches if "compile_s" in (b.get("extra_info") or {})]
    if not rows:
        return []
    lines = ["## torch.compile first calls", "",
             "Wall time of the compile peer's first call (tracing and inductor, with whatever the inductor "
             "cache held); not part of the times above.", "", "| group | first call |", "|---|---:|"]
    lines += [f"| `{g}` | {s:.1f} s |" for g, s in rows]
    return lines + [""]


def skipped(data: dict) -> list[str]:
    items = (data.get("pdiff_fast") or {}).get("skipped") or []
    if not items:
        return []
    by_reason = defaultdict(list)
    for item in items:
        by_reason[item["reason"]].append(item["test"].split("::")[-1])
    lines = ["## Left out (skipped in this run)", ""]
    for reason, tests in by_reason.items():
        lines.append(f"- {reason}: {len(tests)} case(s), e.g. `{tests[0]}`")
    return lines + [""]


def noise_band(data: dict, stat: str) -> list[str]:
    """On CPU, auto and torch run the same torch code outside the extension ops: their ratio is noise."""
    env = (data.get("pdiff_fast") or {}).get("environment") or {}
    if env.get("cuda_device"):
        return []
    groups = defaultdict(dict)
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        same = all(v == "torch" for k, v in (info.get("auto_backends") or {}).items() if k != "unflatten_params")
        if stage_of(b) != "decode_unflatten" and (peer_of(b) != "auto" or same):
            groups[b.get("group")][peer_of(b)] = b["stats"][stat]
    ratios = [g["torch"] / g["auto"] for g in groups.values() if "auto" in g and "torch" in g]
    if not ratios:
        return []
    return [f"On this CPU pdiff_fast (auto) runs the same torch code as pdiff_fast (torch) (only unflatten differs: "
            f"the extension), so outside decode_unflatten their ratio is this run's noise: ×{min(ratios):.2f} to "
            f"×{max(ratios):.2f} over {len(ratios)} groups. Smaller differences between peers are not findings.", ""]


def render(data: dict, stat: str = "min") -> str:
    hw = (data.get("pdiff_fast") or {}).get("hardware") or {}
    stages: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for b in data.get("benchmarks", []):
        stages[stage_of(b)][b.get("group") or b["name"]].append(b)
    lines = header(data, stat) + noise_band(data, stat)
    for stage in sorted(stages, key=lambda st: (STAGE_ORDER.index(st) if st in STAGE_ORDER else 99, st)):
        lines += stage_table(stage, stages[stage], hw, stat)
    lines += compile_times(data.get("benchmarks", []))
    lines += skipped(data)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("-o", "--out", help="markdown file to write (default: stdout)")
    parser.add_argument("--stat", default="min", choices=("min", "median", "mean"),
                        help="statistic of the rounds (default min: other processes only ever add time)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        text = render(json.load(f), args.stat)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

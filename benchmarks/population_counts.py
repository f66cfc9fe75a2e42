"""Launches and host syncs of evaluate_population per 1000 models, counted on the CPU as if the
tensors lived on a CUDA device (issue 23, part 4: the batched evaluator lost to a Python loop
on an H100 because it ran one model per tile with host syncs in every tile).

    python -m benchmarks.population_counts            # writes benchmarks/results/population_counts_cpu.{md,json}
    python -m benchmarks.population_counts --no-write # print only

How it counts (`count_device_work`): a TorchDispatchMode runs the evaluator on CPU tensors and
tracks which tensors would be on the device: the inputs (the base model's parameters and
buffers, flat, x_test, y_test), what ops on them produce or write, and their copies (deepcopy,
`.to(device)`). `.cpu()` makes a host tensor. Then
- a launch (proxy) is an aten or extension op that touches a device tensor, view ops excluded;
- a sync is what blocks the host on a GPU: a scalar read (`.item()`, `bool()`, `int()`: aten
  `_local_scalar_dense`), `.cpu()` / `.tolist()` / `.numpy()` of a device tensor, an op whose
  output size depends on device data (nonzero, masked_select, a boolean index, unique), a
  blocking copy of a host tensor to the device (`.to(device)`, or a host tensor handed to a
  device op), since PyTorch synchronises the stream after each; and each call of the
  extension's flatten / unflatten ops, which upload their segment table that way on CUDA
  (csrc/flatten.cpp; issue 23 item 7);
- extension calls are the ops of the `pdiff_fast` library (norm_affine_act, unflatten_*).
Blind spots: everything is a CPU tensor, so a tensor made by a factory (torch.zeros(...,
device=device)) or before the count (a module's constant) is taken to be wherever it is first
used, and moving it with `.to(...)` counts nothing (it may be an upload: only tensors known to
be on the host, e.g. from `.cpu()`, count). Host time and the cost of each launch are not
measured: only how many there are.

The workload is the population benchmark's (benchmarks/test_population.py): the MNIST-1D CNN
with its last two BatchNorm layers generated (D = 96), 1000 test inputs, batch 1024. Tiles are
the ones each code picks for the full-width model on a device with DEVICE_FREE_BYTES free
(an H100 holds ~78 GiB): 'before' is the evaluator at BEFORE_COMMIT, whose CPU cache tile
(8 MiB) applied on CUDA too (963 (model, sample) pairs: 2000 tiles of one model and 500
samples); 'after' the current one, whose CUDA tiles come from the free device memory (one tile
of 1000 models x 1000 samples), and with evaluate()'s explicit 1 GiB budget. The counts do not
depend on the layers' widths (the same ops on smaller tensors): the one-tile run uses 1-channel
convs, so that its 10^6-pair tile fits a CPU's memory (checked: the counts equal the full
widths' at N = 20).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from pdiff_fast.evaluation import population
from pdiff_fast.params import ParamSpec

BEFORE_COMMIT = "2662997"  # the evaluator before issue 23 part 4 (cache tile on CUDA, syncs per tile)
DEVICE_FREE_BYTES = 78 << 30  # free memory of the H100 the tiles are sized for
N_MODELS, N_TEST, BATCH = 1000, 1000, 1024
RESULTS = Path(__file__).resolve().parent / "results"

aten = torch.ops.aten
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default,
                   aten._unique2.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor,
                   aten.argwhere.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
_NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.new_empty.default,
              aten.new_empty_strided.default, aten.set_.source_Storage_storage_offset, aten.set_.source_Storage,
              aten.lift_fresh.default, aten.detach.default}  # allocate or alias: no launch
# the extension's ops that upload their segment table with a blocking copy on CUDA (csrc/flatten.cpp)
_TABLE_UPLOADS = {"pdiff_fast::flatten_params", "pdiff_fast::unflatten_params", "pdiff_fast::unflatten_into"}
DEVICE, HOST = "device", "host"


@dataclass
class Counts:
    launches: int = 0
    syncs: int = 0
    ext_calls: int = 0
    ops: Counter = field(default_factory=Counter)  # launches by op
    sync_kinds: Counter = field(default_factory=Counter)
    ext_ops: Counter = field(default_factory=Counter)

    def sync(self, kind: str) -> None:
        self.syncs += 1
        self.sync_kinds[kind] += 1

    def summary(self) -> dict:
        return {"launches": self.launches, "syncs": self.syncs, "ext_calls": self.ext_calls,
                "sync_kinds": dict(self.sync_kinds), "ext_ops": dict(self.ext_ops),
                "top_ops": dict(self.ops.most_common(12))}


class _DeviceCounter(TorchDispatchMode):
    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts
        self.where = WeakIdKeyDictionary()  # tensor -> DEVICE / HOST (by identity: == is elementwise)
        self.paused = 0

    def state(self, t) -> str | None:
        return self.where.get(t) if isinstance(t, torch.Tensor) else None

    def mark(self, t: torch.Tensor, where: str) -> None:
        self.where[t] = where
        if where == DEVICE and t._base is not None:  # a write through a view puts the base there too
            self.where[t._base] = DEVICE

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused:
            return out
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(self.state(t) == DEVICE for t in inputs)
        host = [t for t in inputs if self.state(t) == HOST and t.dim() > 0]  # 0-dim: passed by value
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not on_device:
            for t in outputs:
                if host and self.state(t) is None:
                    self.mark(t, HOST)
            return out
        c = self.counts
        if func is aten._local_scalar_dense.default:
            c.sync("scalar read (.item / bool / int)")
            return out
        if func in _DATA_DEPENDENT:
            c.sync(f"data-dependent size ({func.name()})")
        elif func in _INDEXING and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                       for i in pytree.tree_leaves(args[1])):
            c.sync(f"boolean index ({func.name()})")
        if host:
            c.sync("host tensor into a device op (upload)")
        if func.name() in _TABLE_UPLOADS:
            c.sync("segment table upload in the extension")
        if not func.is_view and func not in _NO_KERNEL:
            c.launches += 1
            c.ops[func.name()] += 1
        if func.namespace == "pdiff_fast":
            c.ext_calls += 1
            c.ext_ops[func.name()] += 1
        produced = {id(t) for t in outputs}
        for t in inputs + outputs:  # what a device op reads or writes is on the device
            if self.state(t) is None or id(t) in produced:
                self.mark(t, DEVICE)
        return out


def _is_device_arg(a) -> bool:
    return isinstance(a, (torch.device, str)) or (isinstance(a, int) and not isinstance(a, bool))


@contextlib.contextmanager
def count_device_work(device_tensors):
    """Count launches and syncs (see the module docstring) of the code run inside, with
    `device_tensors` (and whatever is computed from them) taken to live on a CUDA device.
    Yields a Counts, filled in as the code runs."""
    counts = Counts()
    mode = _DeviceCounter(counts)
    originals = {name: getattr(torch.Tensor, name) for name in ("cpu", "tolist", "numpy", "to", "__deepcopy__")}
    param_deepcopy = nn.Parameter.__deepcopy__

    def detached_copy(t):
        mode.paused += 1
        try:
            return t.clone()
        finally:
            mode.paused -= 1

    def cpu(self, *args, **kwargs):
        out = originals["cpu"](self, *args, **kwargs)
        if mode.state(self) == DEVICE:
            counts.sync("copy to the host (.cpu)")
            out = detached_copy(out) if out is self else out
            mode.mark(out, HOST)
        return out

    def reader(name):
        def read(self, *args, **kwargs):
            if mode.state(self) == DEVICE:
                counts.sync(f"copy to the host (.{name})")
            return originals[name](self, *args, **kwargs)
        return read

    def to(self, *args, **kwargs):
        moves = "device" in kwargs or any(_is_device_arg(a) for a in args) or \
            any(isinstance(a, torch.Tensor) for a in args)
        out = originals["to"](self, *args, **kwargs)
        if moves and mode.state(self) == HOST:
            counts.sync("copy to the device (.to)")
            out = detached_copy(out) if out is self else out
            mode.mark(out, DEVICE)
        return out

    def tensor_deepcopy(self, memo):
        out = originals["__deepcopy__"](self, memo)
        if mode.state(self) is not None:
            mode.mark(out, mode.state(self))
        return out

    def parameter_deepcopy(self, memo):
        out = param_deepcopy(self, memo)
        if mode.state(self) is not None:
            mode.mark(out, mode.state(self))
        return out

    for t in device_tensors:
        mode.mark(t, DEVICE)
    patches = {"cpu": cpu, "tolist": reader("tolist"), "numpy": reader("numpy"), "to": to,
               "__deepcopy__": tensor_deepcopy}
    try:
        for name, fn in patches.items():
            setattr(torch.Tensor, name, fn)
        nn.Parameter.__deepcopy__ = parameter_deepcopy
        with mode:
            yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        nn.Parameter.__deepcopy__ = param_deepcopy


# --- the workload ----------------------------------------------------------------------------

def cnn(c1: int = 16, c2: int = 32) -> nn.Sequential:
    """benchmarks.common.mnist1d_cnn at other widths (16, 32 there): the same layers, the same ops."""
    return nn.Sequential(nn.Conv1d(1, c1, 5), nn.BatchNorm1d(c1), nn.ReLU(), nn.Conv1d(c1, c2, 3),
                         nn.BatchNorm1d(c2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c2, 10))


def workload(n_models: int, widths=(16, 32), n_test: int = N_TEST, seed: int = 0):
    """(base, spec, flat, x, y) as benchmarks/test_population.population builds them (last2bn)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base = cnn(*widths)
    for m in base.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    base.eval()
    spec = ParamSpec.from_model(base, "last-2-norm-layers")
    flat = spec.flatten([base]) + 0.1 * torch.randn(n_models, spec.dim, generator=g)
    x = torch.randn(n_test, 1, 40, generator=g)
    y = torch.randint(0, 10, (n_test,), generator=g)
    return base, spec, flat, x, y


def cuda_tile_pairs(memory_budget_bytes: int | None = None, free_bytes: int = DEVICE_FREE_BYTES) -> int:
    """The pairs per tile the current evaluator picks on CUDA for the full-width workload."""
    base, spec, _, x, _ = workload(1, n_test=2)
    with torch.no_grad():
        plan = population._plan(base.eval(), spec, x)
    return population.tile_pairs_for(plan.pair_bytes, "cuda", memory_budget_bytes, free_bytes=free_bytes)


def load_evaluator_at(commit: str):
    """pdiff_fast/population.py as of `commit`, imported beside the current package."""
    source = subprocess.run(["git", "show", f"{commit}:pdiff_fast/population.py"], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / f"population_at_{commit}.py"
    path.write_text(source)
    name = f"pdiff_fast._population_at_{commit}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def count_run(evaluator, args, **kwargs) -> dict:
    """Counts of one evaluate_population call of `evaluator` (a module), and its tiles."""
    base, spec, flat, x, y = args
    tiles = Counter()
    run_suffix = evaluator._run_suffix

    def counted(plan, h, params, m):
        tiles["tiles"] += 1
        tiles["pairs"] += m * h.shape[0]
        return run_suffix(plan, h, params, m)
    evaluator._run_suffix = counted
    try:
        with count_device_work([*base.parameters(), *base.buffers(), flat, x, y]) as counts:
            t0 = time.perf_counter()
            res = evaluator.evaluate_population(base, spec, flat, x, y, batch_size=BATCH, **kwargs)
            seconds = time.perf_counter() - t0
    finally:
        evaluator._run_suffix = run_suffix
    return {**counts.summary(), "tiles": tiles["tiles"], "pairs": tiles["pairs"], "rechecked": res.rechecked,
            "cpu_seconds_under_counting": round(seconds, 2), "_result": res}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--n", type=int, default=N_MODELS, help="models (the figure is scaled to per 1000)")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the committed .json, count nothing")
    args = ap.parse_args(argv)
    if args.render:
        from pdiff_fast.io import load_json, save_text
        report = load_json(RESULTS / "population_counts_cpu.json")
        save_text(RESULTS / "population_counts_cpu.md", render(report))
        return report
    torch.manual_seed(0)
    n = args.n
    population.warm_allocator()
    full, narrow = workload(n), workload(n, widths=(1, 1))
    tile_after = cuda_tile_pairs()
    tile_1gib = cuda_tile_pairs(memory_budget_bytes=1 << 30)
    # the widths change no count: checked on a small population, one tile and several
    small_full, small_narrow = workload(20), workload(20, widths=(1, 1))
    for tile in (20 * N_TEST, 7 * 250):
        a, b = (count_run(population, w, tile_pairs=tile) for w in (small_full, small_narrow))
        same = {k: a[k] for k in ("launches", "syncs", "ext_calls", "tiles")} == \
            {k: b[k] for k in ("launches", "syncs", "ext_calls", "tiles")}
        if not same:
            raise SystemExit(f"counts depend on the widths at tile {tile}: {a} vs {b}")
    before_mod = load_evaluator_at(BEFORE_COMMIT)
    runs = {
        "before": ("evaluator at " + BEFORE_COMMIT + ": the CPU cache tile on CUDA too", before_mod, full, {}),
        "after": (f"current evaluator, CUDA tile from {DEVICE_FREE_BYTES >> 30} GiB free ({tile_after} pairs)",
                  population, narrow, {"tile_pairs": tile_after}),
        "after, 1 GiB budget": (f"current evaluator on CUDA with evaluate()'s memory_budget_bytes = 1 GiB "
                                f"({tile_1gib} pairs)", population, full, {"tile_pairs": tile_1gib}),
    }
    out, preds = {}, {}
    for key, (what, mod, w, kw) in runs.items():
        r = count_run(mod, w, **kw)
        preds[key] = r.pop("_result")
        scale = 1000 / n
        out[key] = {"what": what, **r, "per_1000_models": {k: round(r[k] * scale, 1)
                                                            for k in ("launches", "syncs", "ext_calls", "tiles")}}
        print(f"{key}: {json.dumps(out[key]['per_1000_models'])}", flush=True)
    if not torch.equal(preds["before"].predictions, preds["after, 1 GiB budget"].predictions):
        raise SystemExit("before and after disagree on the full-width workload")
    meta = {"device": f"CPU ({platform.processor() or platform.machine()}), counting as if on CUDA; "
                      f"no GPU was used", "torch": torch.__version__, "n_models": n, "n_test": N_TEST,
            "batch": BATCH, "subset": "last-2-norm-layers (D = 96)", "device_free_bytes": DEVICE_FREE_BYTES,
            "before_commit": BEFORE_COMMIT,
            "date": time.strftime("%Y-%m-%d")}
    report = {"meta": meta, "runs": out}
    md = render(report)
    print(md)
    if not args.no_write:
        from pdiff_fast.io import save_json, save_text
        save_json(RESULTS / "population_counts_cpu.json", report)
        save_text(RESULTS / "population_counts_cpu.md", md)
    return report


def render(report: dict) -> str:
    m, runs = report["meta"], report["runs"]
    first = ("before", "after", "after, 1 GiB budget")  # the JSON's keys come back sorted
    runs = {k: runs[k] for k in [*(k for k in first if k in runs), *(k for k in runs if k not in first)]}
    lines = [f"# Population evaluation: launches and host syncs per 1000 models ({m['device']})", "",
             f"Counted with `python -m benchmarks.population_counts` (torch {m['torch']}, {m['date']}): "
             f"the population benchmark's MNIST-1D CNN, {m['subset']}, N = {m['n_models']} models, "
             f"{m['n_test']} test inputs, batch {m['batch']}. A launch is an aten or extension op on a "
             "device tensor (view ops excluded), a sync anything that blocks the host on a GPU "
             "(see the script's docstring for what is counted and its blind spots). No time here is a GPU time.",
             "", "| evaluator | tiles | launches | syncs | extension calls |", "|---|---:|---:|---:|---:|"]
    for key, r in runs.items():
        p = r["per_1000_models"]
        lines.append(f"| {key}: {r['what']} | {p['tiles']:g} | {p['launches']:g} | {p['syncs']:g} | "
                     f"{p['ext_calls']:g} |")
    b, a, a1 = runs.get("before"), runs.get("after"), runs.get("after, 1 GiB budget")
    if b and a and a1 and a1["tiles"] > a["tiles"]:
        per_tile = (a1["launches"] - a["launches"]) / (a1["tiles"] - a["tiles"])
        lines += ["", f"Per tile: before {b['launches'] / b['tiles']:.0f} launches and "
                      f"{(b['syncs'] - a['syncs']) / b['tiles']:.1f} syncs (the predictions and the top-2 gaps "
                      "copied to the host, and a boolean-mask write of NaN gaps; the bits were packed on the "
                      f"host); after {per_tile:.0f} launches (the bits packed on the device) and no sync. "
                      f"Per call, whatever the tiles: {a['syncs']} syncs (the test-set checks, the finite "
                      "rows, the recheck's distance and list of pairs, the copies of the results, the "
                      "extension's segment tables) and about "
                      f"{a['launches'] - per_tile * a['tiles']:.0f} launches (the checks, the plan's probe "
                      "forwards, the reference's calibration forwards)."]
    lines += ["", "Syncs by kind:", ""]
    for key, r in runs.items():
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["sync_kinds"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- {key}: {kinds}")
    lines += ["", "Launches by op (most frequent):", ""]
    for key, r in runs.items():
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["top_ops"].items(), key=lambda kv: -kv[1]))
        lines.append(f"- {key}: {ops}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

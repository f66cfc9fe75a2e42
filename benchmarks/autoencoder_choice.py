"""Evidence for `auto`'s choice between the `small` and `lowrank` autoencoders: the same
population, the same number of training steps, reconstruction error and the accuracy of the
reconstructed models.

    python -m benchmarks.autoencoder_choice --run-dirs runs/default runs/whole-mlp --steps 100

Each run directory needs a collected population (`pdiff-fast collect`). Per population and
preset: seconds per training step, the clean reconstruction error decode(encode(x)) of the K
standardised checkpoints as a fraction of their own variance around their mean (1.0 = no better
than outputting the mean checkpoint), and the mean test accuracy of the K reconstructed models
next to the originals'. Writes autoencoder_choice_<device>.{json,md} into --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def measure(run_dir: Path, preset: str, steps: int) -> dict:
    import torch

    from pdiff_fast import PDiff
    from pdiff_fast.nn.autoencoder_choice import build_autoencoder
    from pdiff_fast.evaluation.judge import evaluate_rows
    from pdiff_fast.pipeline.train import fit_autoencoder

    p = PDiff.from_run_dir(run_dir, progress=False, device="cpu")
    pop = p.population()
    std = p.standardizer(pop)
    x = std.transform(pop.params) if std else pop.params
    torch.manual_seed(0)
    ae = build_autoencoder(preset, pop.spec.dim)
    start = time.perf_counter()
    fit_autoencoder(ae, x, steps, progress=False)
    per_step = (time.perf_counter() - start) / steps
    with torch.no_grad():
        rec = ae.decode(ae.encode(x))
    spread = ((x - x.mean(0)) ** 2).mean().item()
    error = ((rec - x) ** 2).mean().item()
    params = std.inverse(rec) if std else rec
    data = p.data
    acc = evaluate_rows(p.base_model(), pop.spec, params, data.x_test, data.y_test, 1 << 30).accuracy
    return {"run_dir": str(run_dir), "D": pop.spec.dim, "K": len(x), "preset": preset, "steps": steps,
            "s_per_step": per_step, "error_over_spread": error / spread,
            "original_mean_accuracy": pop.accuracy.double().mean().item(),
            "reconstructed_mean_accuracy": torch.as_tensor(acc).double().mean().item()}


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"# small vs lowrank on the same populations ({device})", "",
             "Clean reconstruction error of the K standardised checkpoints over their own variance around "
             "their mean (1.0 = no better than the mean checkpoint); mean test accuracy of the K "
             "reconstructed models. Same steps for both presets.", "",
             "| population (D) | preset | steps | s/step | error / spread | reconstructed acc. | original acc. |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {Path(r['run_dir']).name} ({r['D']:,}) | {r['preset']} | {r['steps']} "
                     f"| {r['s_per_step']:.3f} | {r['error_over_spread']:.3g} | {r['reconstructed_mean_accuracy']:.2f} "
                     f"| {r['original_mean_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def cpu_name() -> str:
    import os

    import torch

    from benchmarks.common import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dirs", nargs="+", type=Path, required=True)
    ap.add_argument("--presets", default="small,lowrank")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    rows = [measure(d, preset, args.steps) for d in args.run_dirs for preset in args.presets.split(",")]
    device = cpu_name()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoencoder_choice_cpu.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    (args.out / "autoencoder_choice_cpu.md").write_text(markdown(rows, device))
    print(markdown(rows, device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

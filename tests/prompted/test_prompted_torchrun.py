"""A prompted run under torchrun (2 gloo processes): the same models and report as one process."""
import json
import shutil

import torch

from pdiff_fast.cli import main
from pdiff_fast.io import load_artifact
from tests.test_distributed import _pdiff

TINY = {"device": "cpu", "dataset": "digits", "model": "mlp", "recipe": "span", "prompted": True, "epochs": 2,
        "k": 10, "trajectories": 2, "subset_lr": 0.1, "ae_steps": 20, "diffusion_steps": 20,
        "denoiser_channels": [4, 4, 8, 8], "sampler": "ddim", "sample_steps": 4, "num_samples": 8, "sample_grain": 2,
        "noise_sigmas": [0.05]}


def test_torchrun_prompted_run_matches_one_process(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(TINY))
    both = tmp_path / "two"
    proc = _pdiff("run", "--run-dir", both, "--config", tmp_path / "cfg.json", torchrun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("generated 8 parameter sets") == 1
    one = tmp_path / "one"
    shutil.copytree(both, one)
    for step in ("sample", "evaluate"):
        assert main([step, "--run-dir", str(one), "--quiet"]) == 0
    (gen_two, _, _), (gen_one, _, _) = (load_artifact(d / "generated.safetensors") for d in (both, one))
    assert torch.equal(gen_two["params"], gen_one["params"]) and torch.equal(gen_two["prompt"], gen_one["prompt"])
    reports = [json.loads((d / "report.json").read_text()) for d in (both, one)]
    for r in reports:
        r.pop("timings")
    assert reports[0] == reports[1] and "calibration" in reports[0]["prompted"]
    assert (both / "calibration.png").is_file()

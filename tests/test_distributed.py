"""Many processes give the results of one: real 2-process jobs on CPU with gloo.

The API tests start their processes with torch.multiprocessing (each joins through
pdiff_fast.distributed.init, as under torchrun); the CLI test runs `torchrun --standalone
--nproc_per_node=2 -m pdiff_fast run` and compares with one process.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from pdiff_fast import distributed
from pdiff_fast.pipeline.lock import LOCK_NAME
from pdiff_fast.nn.autoencoder import small
from pdiff_fast.cli import main
from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck
from pdiff_fast.diffusion.few_step import DPMSolverScheduler
from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from pdiff_fast.evaluation.judge import evaluate
from pdiff_fast.io import load_artifact
from pdiff_fast.params import ParamSpec
from pdiff_fast.diffusion.sample import generate
from pdiff_fast.pipeline.train import fit_autoencoder, fit_diffusion

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


@pytest.mark.parametrize("n", [0, 1, 5, 11, 64])
@pytest.mark.parametrize("block", [1, 2, 4])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_deals_whole_blocks_in_order(n, block, world):
    spans = [distributed.shard(n, block, rank_=r, world=world) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (a0, b0), (a1, _) in zip(spans, spans[1:]):
        assert b0 == a1  # contiguous, in rank order
    for a, b in spans:
        assert a <= b and a % block == 0 and (b % block == 0 or b == n)
    sizes = [-(-(b - a) // block) for a, b in spans]  # blocks per rank
    assert max(sizes) - min(sizes) <= 1


def test_one_process_helpers_are_identities():
    t = torch.arange(6).view(3, 2)
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.gather_rows(t, 3) is t and distributed.sum_int(4) == 4
    assert distributed.on_main(lambda: 7) == 7
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")  # no WORLD_SIZE: nothing to join


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"process 1 of this machine, which has 1 GPU\(s\): one process per GPU"):
        distributed.init(torch.device("cuda"))
    assert not distributed.active()


# --- API: the same models and the same report as one process ---------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"), timeout_s=120)  # a deadlock fails the test instead of hanging it
    assert distributed.active() and distributed.rank() == rank


def _helpers_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    mine = torch.arange(3 * rank, dtype=torch.float64).view(-1, 1).expand(-1, 2) + 100 * rank  # 0 rows, 3 rows
    got = {
        "varying": distributed.gather_rows(mine),
        "blocks": distributed.gather_rows(torch.full((distributed.shard(5, 2)[1] - distributed.shard(5, 2)[0],),
                                                     rank, dtype=torch.bool), 5, 2),
        **distributed.broadcast_tensors({"w": torch.randn(2, 3), "steps": torch.tensor(7 + rank),
                                         "mask": torch.tensor([True, False])}),
    }
    assert distributed.broadcast_json({"digest": f"abc{rank}", "n": [1, 2]}) == {"digest": "abc0", "n": [1, 2]}
    assert distributed.sum_int(rank + 1) == 3
    save_file({k: v.contiguous() for k, v in got.items()}, f"{out}.{rank}.safetensors")
    distributed.shutdown()


def test_gather_and_broadcast_across_two_processes(tmp_path):
    r0, r1 = spawn_ranks(_helpers_worker, str(tmp_path / "helpers"))
    for r in (r0, r1):  # every rank holds the same result
        assert torch.equal(r["varying"], torch.tensor([[100.0, 100.0], [101.0, 101.0], [102.0, 102.0]],
                                                      dtype=torch.float64))
        assert r["blocks"].tolist() == [False, False, True, True, True]  # rank 0: 1 block, rank 1: 2
        assert r["steps"].item() == 7 and r["mask"].tolist() == [True, False]
    assert torch.equal(r0["w"], r1["w"])


def spawn_ranks(worker, out: str) -> list[dict]:
    """worker(rank, port, out) in WORLD gloo processes; the tensors each rank saved to
    f"{out}.{rank}.safetensors", in rank order."""
    mp.spawn(worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return [load_file(f"{out}.{r}.safetensors") for r in range(WORLD)]


def _sampling_models():
    torch.manual_seed(0)
    ae = small(150).eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1, channel_list=[4, 4, 8, 8]).eval()
    return ae, den


def _generate(shard: bool) -> torch.Tensor:
    ae, den = _sampling_models()
    # DDIM and a multistep solver (its state is per process and per chunk)
    return torch.cat([generate(ae, den, s, 11, device="cpu", seed=7, grain=2, chunk_size=2, progress=False, shard=shard)
                      for s in (DDIMScheduler(6, eta=0.5), DPMSolverScheduler(5, sde=True))])


def _evaluation_case():
    """A BatchNorm MLP, its last norm layer as the subset, 5 originals, 9 'generated' rows."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    model[1].running_var.uniform_(0.5, 2)
    spec = ParamSpec.from_model(model, "last-1-norm-layers")
    base = torch.cat([p.detach().reshape(-1) for p in model[1].parameters()])
    original = base + 0.3 * torch.randn(5, spec.dim)
    generated = base + 0.6 * torch.randn(9, spec.dim)
    generated[4, 0] = float("nan")  # a non-finite model is gathered as such
    x, y = torch.randn(70, 8), torch.randint(0, 3, (70,))
    return model, spec, original, generated, x, y


def _evaluate(shard: bool) -> dict:
    model, spec, original, generated, x, y = _evaluation_case()
    return evaluate(model, spec, original, generated, x, y, noise_sigmas=[0.05], seed=3,
                    memory_budget_bytes=1 << 20, shard=shard)


def _worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    flat = _generate(shard=True)
    report = _evaluate(shard=True)
    if rank == 0:
        save_file({"flat": flat}, out + ".safetensors")
        Path(out + ".json").write_text(json.dumps(report))
    distributed.shutdown()


@pytest.mark.usefixtures("one_thread")
def test_two_processes_sample_and_evaluate_as_one(tmp_path):
    out = str(tmp_path / "rank0")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    assert torch.equal(load_file(out + ".safetensors")["flat"], _generate(shard=False))  # bitwise
    one = _evaluate(shard=False)
    assert json.loads(Path(out + ".json").read_text()) == json.loads(json.dumps(one))
    assert one["generated_nonfinite"] == 1


def _train(shard: bool) -> dict:
    """8 steps of each loop: the autoencoder on the full batch of 12 vectors (6 rows a rank),
    the denoiser on random batches of 5 (3 and 2 rows: the unequal shares are weighted). Few
    steps: AdamW grows the last-bit differences of the reordered sums (2e-7 after 5 autoencoder
    steps, 4e-5 after 10, 2e-3 after 20 on this case), as it would any rounding change."""
    torch.manual_seed(0)
    params = 0.5 * torch.randn(12, 150)
    ae = small(150)
    ae_losses = fit_autoencoder(ae, params, steps=8, seed=0, progress=False, shard=shard)
    with torch.no_grad():
        latents = ae.eval().encode(params)
    torch.manual_seed(1)
    den = EMA(AE_CNN_bottleneck(latents[0].numel(), 1, channel_list=[4, 4, 8, 8]), 0.9)
    den_losses = fit_diffusion(den, latents, DDPMScheduler(), steps=8, batch_size=5, seed=0, progress=False,
                               shard=shard)
    return {"ae_losses": torch.tensor(ae_losses), "den_losses": torch.tensor(den_losses),
            **{f"ae.{k}": v for k, v in ae.state_dict().items()},
            **{f"den.{k}": v for k, v in den.state_dict().items()}}


def _train_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    save_file({k: v.contiguous() for k, v in _train(shard=True).items()}, f"{out}.{rank}.safetensors")
    distributed.shutdown()


@pytest.mark.xfail(strict=False, reason="fails on the 2-core CPU machine at the landed code too (torch 2.13.0+cpu, "
                   "2026-12-07): after 8 steps the 2-rank denoiser differs from the one-process one by up to "
                   "6e-3 on weights of 0.2, beyond summation order; cause not yet found")
@pytest.mark.usefixtures("one_thread")
def test_ddp_training_follows_one_process(tmp_path):
    ranks = spawn_ranks(_train_worker, str(tmp_path / "train"))
    one = _train(shard=False)
    for k, v in ranks[0].items():
        assert torch.equal(v, ranks[1][k]), k  # DDP keeps the ranks' models identical
        torch.testing.assert_close(v, one[k], rtol=1e-3, atol=3e-4, msg=k)  # sums in another order
    for what in ("ae_losses", "den_losses"):  # step 0 (before any update: exact weighting) and the last
        assert len(one[what]) == 2
        torch.testing.assert_close(ranks[0][what], one[what], rtol=1e-5, atol=0)


# --- CLI: torchrun end to end, then the same steps in one process -----------------------------

TINY = {  # on CPU (gloo) also on a GPU machine, which may have fewer GPUs than processes
    "device": "cpu", "dataset": "digits", "model": "mlp", "epochs": 2, "k": 10, "ae_steps": 30, "diffusion_steps": 30,
    "denoiser_channels": [4, 4, 8, 8], "sampler": "ddim", "sample_steps": 4, "num_samples": 7,
    "sample_grain": 2, "noise_sigmas": [0.05], "recipe": "v2",
}


def _pdiff(*args, torchrun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"] \
        if torchrun else [sys.executable]
    return subprocess.run([*launcher, "-m", "pdiff_fast", *map(str, args), "--quiet"], capture_output=True,
                          text=True, timeout=600, env=env)


def test_torchrun_runs_the_pipeline_and_matches_one_process(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(TINY))
    both = tmp_path / "two"
    proc = _pdiff("run", "--run-dir", both, "--config", tmp_path / "cfg.json", torchrun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("generated 7 parameter sets") == 1  # output from rank 0 only
    one = tmp_path / "one"
    shutil.copytree(both, one)
    for step in ("sample", "evaluate"):
        assert main([step, "--run-dir", str(one), "--quiet"]) == 0
    gen_two, gen_one = (load_artifact(d / "generated.safetensors")[0]["params"] for d in (both, one))
    assert torch.equal(gen_two, gen_one)
    reports = [json.loads((d / "report.json").read_text()) for d in (both, one)]
    for r in reports:
        r.pop("timings")
    assert reports[0] == reports[1]
    assert not list(both.glob("*.tmp*")) and (both / "accuracy_distribution.png").is_file()


FAILING_RANK = '''
import os, runpy, signal, sys
import pdiff_fast.pipeline.pdiff as pipeline

real, how = pipeline.generate, sys.argv[1]


def generate(*args, **kwargs):
    if os.environ["RANK"] == "1":  # dies (or raises) in the middle of sampling
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError("rank 1 broke down")
    return real(*args, **kwargs)


pipeline.generate = generate
sys.argv = ["pdiff_fast", *sys.argv[2:]]
runpy.run_module("pdiff_fast", run_name="__main__")  # python -m pdiff_fast, as users run it
'''


@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_failing_rank_ends_the_job_naming_it_and_leaves_the_run_consistent(tmp_path, how):
    (tmp_path / "cfg.json").write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert main(["run", "--run-dir", str(run), "--config", str(tmp_path / "cfg.json"), "--quiet"]) == 0
    files = lambda: {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_NAME}  # noqa: E731
    before = files()
    (tmp_path / "failing.py").write_text(FAILING_RANK)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
                           str(tmp_path / "failing.py"), how, "sample", "--run-dir", str(run), "--quiet",
                           "--seed", "5"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    summary = proc.stderr[proc.stderr.rindex("Root Cause (first observed failure)"):]  # torchrun's verdict
    failed = summary[summary.index("rank      : 1"):]
    assert ("Signal 9 (SIGKILL)" if how == "kill" else "RuntimeError: rank 1 broke down") in failed, summary
    assert files() == before  # nothing half-written, nothing lost, no temporaries
    left = (run / LOCK_NAME).read_text()  # rank 0 held the lock; stopped holding it, it names rank 0
    assert left == "" or json.loads(left)["step"] == "sample"
    assert main(["sample", "--run-dir", str(run), "--quiet", "--seed", "5"]) == 0  # the step reruns, taking it over


def test_two_process_workers_exit_cleanly_many_times(tmp_path):
    """The gloo teardown abort ("terminate called without an active exception", SIGABRT) seen
    once in CI: every worker leaves the group with distributed.shutdown(); repeat the smallest job."""
    for i in range(5):
        mp.spawn(_helpers_worker, args=(_free_port(), str(tmp_path / f"h{i}")), nprocs=WORLD, join=True)

"""generate() with a diffusers scheduler object: the same models as pdiff_fast's own sampler where
both define the same process, reproducible and independent of chunking where only diffusers has
the noise, and one clear line for what cannot run."""
import pytest
import torch

from pdiff_fast.diffusion.few_step import DPMSolverScheduler
from pdiff_fast.diffusion.sample import generate
from pdiff_fast.diffusion.samplers import as_scheduler

diffusers = pytest.importorskip("diffusers")
COMMON = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")


def gen(models, scheduler, n=7, **kw):
    ae, den = models
    kw = {"device": "cpu", "seed": 3, "grain": 2, "progress": False, **kw}
    return generate(ae, den, scheduler, n, **kw)


@pytest.mark.parametrize("sde", [False, True], ids=["2m", "2m-sde"])
def test_diffusers_dpm_solver_gives_our_models(models, sde):
    d = diffusers.DPMSolverMultistepScheduler(**COMMON, algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
                                              thresholding=True, sample_max_value=1.0)
    d.set_timesteps(6)
    theirs = gen(models, d)
    ours = gen(models, DPMSolverScheduler(6, sde=sde, clamp_sample=False))
    assert torch.isfinite(theirs).all()
    # float32 schedules (diffusers) against float64 ones (ours), through the decoder: ~2e-4 apart;
    # different noise or a different step would be O(1) apart
    torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-3)


def test_diffusers_euler_ancestral_is_reproducible_and_chunk_independent(models):
    d = diffusers.EulerAncestralDiscreteScheduler(**COMMON, timestep_spacing="trailing")
    d.set_timesteps(5)
    runs = [gen(models, d, chunk_size=c) for c in (2, 4, 8)]
    assert all(torch.equal(r, runs[0]) for r in runs[1:])
    assert torch.equal(gen(models, d, n=9, chunk_size=4)[:7], runs[0])
    assert not torch.equal(gen(models, d, seed=4), runs[0])


def test_what_cannot_run_is_one_clear_line():
    with pytest.raises(ValueError, match="distinct integers"):
        d = diffusers.EulerAncestralDiscreteScheduler(**COMMON)  # linspace spacing: fractional timesteps
        d.set_timesteps(7)
        as_scheduler(d)
    with pytest.raises(ValueError, match="set_timesteps"):
        as_scheduler(diffusers.DDIMScheduler(**COMMON))
    v = diffusers.DDIMScheduler(**COMMON, prediction_type="v_prediction")
    v.set_timesteps(5)
    with pytest.raises(ValueError, match="predict epsilon"):
        as_scheduler(v)
    with pytest.raises(TypeError, match="not a scheduler: str"):
        as_scheduler("dpm++2m")

"""pdiff_fast.diffusion.from_diffusers' parts, step by step against the diffusers scheduler run by
hand: what counts as a diffusers scheduler, the checks and their messages, the sample the adapter
keeps and the model input it hands back, and the noise (the loop's, per-model generators from the
seed, or the caller's generator). Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md). Without generate() (pdiff_fast/diffusion/sample.py), so that each
mutant runs in seconds."""
import types

import pytest
import torch

from pdiff_fast.diffusion.from_diffusers import DiffusersScheduler, is_diffusers_scheduler
from pdiff_fast.diffusion.seeds import model_seed
from pdiff_fast.diffusion.schedulers import SchedulerOutput

diffusers = pytest.importorskip("diffusers")
COMMON = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")


def euler(steps=4):
    d = diffusers.EulerAncestralDiscreteScheduler(**COMMON, timestep_spacing="trailing")
    d.set_timesteps(steps)
    return d


def dpm(steps=4, **kw):
    d = diffusers.DPMSolverMultistepScheduler(**COMMON, algorithm_type="sde-dpmsolver++", **kw)
    d.set_timesteps(steps)
    return d


def eps_of(x, i):
    return torch.tanh(x) * (0.5 + 0.1 * i)


def test_what_counts_as_a_diffusers_scheduler():
    attrs = ("set_timesteps", "step", "scale_model_input", "config")
    assert is_diffusers_scheduler(euler())
    assert is_diffusers_scheduler(types.SimpleNamespace(**dict.fromkeys(attrs)))
    for missing in attrs:
        assert not is_diffusers_scheduler(types.SimpleNamespace(**{a: None for a in attrs if a != missing}))


def test_the_checks_and_their_messages():
    v = diffusers.DDIMScheduler(**COMMON, prediction_type="v_prediction")
    v.set_timesteps(5)
    with pytest.raises(ValueError, match=r"^pdiff_fast's denoisers predict epsilon; this scheduler is configured "
                                         r"for 'v_prediction'$"):
        DiffusersScheduler(v)
    with pytest.raises(ValueError, match=r"^call the diffusers scheduler's set_timesteps\(steps\) first, or pass "
                                         r"num_inference_steps$"):
        DiffusersScheduler(diffusers.DDIMScheduler(**COMMON))
    fractional = diffusers.EulerAncestralDiscreteScheduler(**COMMON)
    fractional.set_timesteps(7)
    message = (r"^the diffusers scheduler's timesteps must be distinct integers \(pdiff_fast's denoisers take "
               r"integer timesteps\); try timestep_spacing='trailing' or 'leading'$")
    with pytest.raises(ValueError, match=message):
        DiffusersScheduler(fractional)
    repeated = types.SimpleNamespace(config=types.SimpleNamespace(), num_inference_steps=3,
                                     timesteps=torch.tensor([9, 5, 5]), step=lambda *a, **k: None)
    with pytest.raises(ValueError, match=message):
        DiffusersScheduler(repeated)
    plain = types.SimpleNamespace(config=types.SimpleNamespace(), num_inference_steps=2,
                                  timesteps=torch.tensor([9, 5]), step=lambda model_output, timestep, sample: None)
    assert DiffusersScheduler(plain).timesteps() == [9, 5]  # no prediction_type: epsilon


def test_timesteps_and_noise_draws():
    d = DiffusersScheduler(diffusers.DDIMScheduler(**COMMON), num_inference_steps=5)  # set_timesteps called
    assert d.timesteps() == [int(t) for t in d.inner.timesteps] and len(d.timesteps()) == 5
    assert all(type(t) is int for t in d.timesteps())
    d.timesteps().clear()
    assert d.noise_draws() == 6 and d.step_op is None and d.host_timestep is True
    assert d._takes_noise and not DiffusersScheduler(euler())._takes_noise


def test_a_loop_is_diffusers_own_loop():
    """Euler ancestral keeps its sample in sigma space: the adapter hands the loop the model input
    (scale_model_input of its sample), and the last step the sample itself."""
    ours, ref = DiffusersScheduler(euler()), euler()
    x0 = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    x, sample = x0, x0 * ref.init_noise_sigma
    assert ref.init_noise_sigma > 2
    for i, t in enumerate(ours.timesteps()):
        eps = eps_of(x, i)
        out = ours.step(eps, t, x, generator=torch.Generator().manual_seed(i))
        theirs = ref.step(eps, ref.timesteps[i], sample, generator=torch.Generator().manual_seed(i))
        sample = theirs.prev_sample
        assert isinstance(out, SchedulerOutput)
        assert torch.equal(out.pred_original_sample, theirs.pred_original_sample)
        if i + 1 < len(ours.timesteps()):
            assert torch.equal(out.prev_sample, ref.scale_model_input(sample, ref.timesteps[i + 1]))
        else:
            assert torch.equal(out.prev_sample, sample)
        x = out.prev_sample


def test_each_model_has_its_own_generator_from_the_seed():
    ours, ref = DiffusersScheduler(euler()), euler()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    sample = x * ref.init_noise_sigma
    for i, t in enumerate(ours.timesteps()[:2]):
        gens = [torch.Generator().manual_seed(model_seed(model_seed(7, 10 + j), 1 + i)) for j in range(3)]
        out = ours.step(eps_of(x, i), t, x, seed=7, row_offset=torch.tensor(10),
                        generator=torch.Generator().manual_seed(99))  # the seed wins over the generator
        sample = ref.step(eps_of(x, i), ref.timesteps[i], sample, generator=gens).prev_sample
        assert torch.equal(out.prev_sample, ref.scale_model_input(sample, ref.timesteps[i + 1]))
        x = out.prev_sample


def test_the_loops_noise_goes_where_the_step_takes_it():
    ours, ref = DiffusersScheduler(dpm()), dpm()
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(2)) * 0.5
    sample = x * ref.init_noise_sigma
    for i, t in enumerate(ours.timesteps()):
        z = torch.randn(2, 6, generator=torch.Generator().manual_seed(20 + i))
        out = ours.step(eps_of(x, i), t, x, noise=z, seed=3)  # the noise wins over the seed
        sample = ref.step(eps_of(x, i), ref.timesteps[i], sample, variance_noise=z).prev_sample
        assert torch.equal(out.prev_sample, ref.scale_model_input(sample, ref.timesteps[i + 1])
                           if i + 1 < 4 else sample)
        x = out.prev_sample


def test_step_kwargs_reach_every_step_and_a_new_loop_starts_again():
    ours = DiffusersScheduler(diffusers.DDIMScheduler(**COMMON), num_inference_steps=3, eta=1.0)
    ref = diffusers.DDIMScheduler(**COMMON)
    ref.set_timesteps(3)
    x = torch.rand(2, 4) - 0.5
    for loop in range(2):  # the second loop runs from the start again
        y, sample = x, x.clone()
        for i, t in enumerate(ours.timesteps()):
            z = torch.full((2, 4), 0.1 * (i + 1))
            y = ours.step(eps_of(y, i), t, y, noise=z).prev_sample
            sample = ref.step(eps_of(sample, i), ref.timesteps[i], sample, eta=1.0, variance_noise=z).prev_sample
            assert torch.equal(y, sample), (loop, i)
        ref.set_timesteps(3)
    assert ours.step_kwargs == {"eta": 1.0}


def test_a_scheduler_without_a_step_count_is_one_clear_line():
    bare = types.SimpleNamespace(config=types.SimpleNamespace(), timesteps=torch.tensor([9, 5]),
                                 step=lambda *a, **k: None)  # no num_inference_steps attribute at all
    with pytest.raises(ValueError, match=r"^call the diffusers scheduler's set_timesteps\(steps\) first"):
        DiffusersScheduler(bare)


def test_per_model_generators_from_row_zero_by_default_and_one_per_row():
    """Four models of two values: a generator per model (row), not per value; the rows counted
    from 0 unless the chunk says where it starts. The loop's noise is not handed to a step that
    does not take it (Euler ancestral): the seed's generators draw it."""
    ours, ref = DiffusersScheduler(euler()), euler()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    sample = x * ref.init_noise_sigma
    for i, t in enumerate(ours.timesteps()[:2]):
        gens = [torch.Generator().manual_seed(model_seed(model_seed(7, j), 1 + i)) for j in range(4)]
        out = ours.step(eps_of(x, i), t, x, noise=torch.zeros(4, 2), seed=7)
        sample = ref.step(eps_of(x, i), ref.timesteps[i], sample, generator=gens).prev_sample
        assert torch.equal(out.prev_sample, ref.scale_model_input(sample, ref.timesteps[i + 1]))
        x = out.prev_sample

"""Training loops: resuming from a checkpoint gives the uninterrupted result bitwise (CPU), and a
diverging loss stops training with the likely cause named."""
import copy

import pytest
import torch

from pdiff_fast.nn.autoencoder import small
from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck
from pdiff_fast.diffusion.schedulers import DDPMScheduler
from pdiff_fast.pipeline.train import TrainingDiverged, fit_autoencoder, fit_diffusion


def _ae_run(steps, data, **kw):
    torch.manual_seed(0)
    ae = small(data.shape[1])
    losses = fit_autoencoder(ae, data, steps, batch_size=5, progress=False, **kw)
    return ae, losses


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


class Killed(Exception):
    pass


def _save_then_kill(saved):
    """A checkpoint callback that keeps a copy (as a save to disk would) and then dies."""
    def save(tensors, meta):
        saved.append(({k: v.clone() for k, v in tensors.items()}, copy.deepcopy(meta)))
        raise Killed
    return save


def _keep(saved):
    return lambda t, m: saved.append(({k: v.clone() for k, v in t.items()}, copy.deepcopy(m)))


@pytest.mark.parametrize("stop_after", [7, 50])
def test_autoencoder_resume_equals_uninterrupted_bitwise(stop_after):
    data = torch.randn(9, 90)
    full, full_losses = _ae_run(60, data)
    saved = []
    with pytest.raises(Killed):
        _ae_run(60, data, checkpoint=_save_then_kill(saved), checkpoint_every=stop_after)
    assert saved[0][1]["step"] == stop_after
    torch.manual_seed(123)  # the global RNG (the noise augmentation's) moved on; the checkpoint has it
    ae = small(90)
    losses = fit_autoencoder(ae, data, 60, batch_size=5, progress=False, resume=saved[0])
    _assert_same_state(ae, full)
    assert losses == full_losses


def test_diffusion_resume_equals_uninterrupted_bitwise():
    latents = torch.rand(12, 2, 5) * 2 - 1

    def run(steps, **kw):
        torch.manual_seed(1)
        model = EMA(AE_CNN_bottleneck(10, 1, channel_list=[4, 4, 8, 8]), 0.9)
        losses = fit_diffusion(model, latents, DDPMScheduler(), steps, batch_size=7, seed=3, progress=False, **kw)
        return model, losses

    full, full_losses = run(45)
    saved = []
    run(45, checkpoint=_keep(saved), checkpoint_every=15)
    assert [m["step"] for _, m in saved] == [15, 30]
    torch.manual_seed(99)  # whatever the global RNG does before the resumed run
    model, losses = run(45, resume=saved[0])
    _assert_same_state(model, full)  # model, EMA
    assert losses == full_losses


def test_checkpoints_hold_every_generator_and_the_optimizer():
    saved = []
    _ae_run(10, torch.randn(6, 90), checkpoint=_keep(saved), checkpoint_every=5)
    tensors, meta = saved[0]
    assert meta["step"] == 5 and meta["param_groups"] and meta["python_random"]
    assert "rng.torch" in tensors and "rng.batches" in tensors
    assert any(k.startswith("optim.") and k.endswith("exp_avg") for k in tensors)


def test_a_growing_loss_is_divergence_and_names_the_learning_rate():
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+.*ae_lr=1e\+06.*likely cause"):
        _ae_run(300, torch.randn(8, 90), lr=1e6)


def test_non_finite_data_is_named_as_the_data():
    data = torch.randn(6, 90)
    data[2, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or Inf values: the data is broken, not the learning rate"):
        _ae_run(5, data)
    with pytest.raises(ValueError, match="latents"):
        fit_diffusion(EMA(AE_CNN_bottleneck(10, 1, channel_list=[2, 2, 2, 2])), torch.full((4, 2, 5), float("inf")),
                      DDPMScheduler(), 2, progress=False)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="at least 1 step"):
        _ae_run(0, torch.randn(6, 90))


def test_progress_prints_the_time_per_step_and_what_is_left(capsys):
    torch.manual_seed(0)
    fit_autoencoder(small(100), torch.randn(4, 100), steps=8, progress=True)
    out = capsys.readouterr()
    line = [s for s in (out.out + out.err).splitlines() if "s/step" in s]
    assert line and line[0].startswith("train autoencoder:") and "8 steps; about" in line[0] and "to go" in line[0]
    fit_autoencoder(small(100), torch.randn(4, 100), steps=8, progress=False)
    out = capsys.readouterr()
    assert "s/step" not in out.out + out.err

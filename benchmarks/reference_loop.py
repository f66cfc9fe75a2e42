"""The baseline of the throughput suite: an eager re-implementation of the reference p-diff v1
loops (NUS-HPC-AI-Lab/Neural-Network-Parameter-Diffusion, branch `main`), written from a
description of that code's habits, which are listed below (no code is copied). It is slow on
purpose, in the same places the reference is slow, because that is what pdiff_fast is measured
against:

- modules are plain nn.Sequential stacks of the same layers (no fused ops); their state_dict
  keys are the reference's, so a pdiff_fast state_dict loads into them with strict=True;
- the denoiser gives every sample the timestep of sample 0 (`time_emb[0]`);
- DDPM sampling builds the timestep and the t == 0 mask on the host, draws the noise on the host
  with torch.randn and copies it to the device at every step, rebuilds the fixed-large
  log-variance table and gathers every coefficient with `extract` at every step, and copies each
  step's x_t back to the host (the reference keeps a history list);
- autoencoder training reads the loss back to the host every step (the reference logs it);
- diffusion training draws the timesteps on the host, encodes the parameter vectors again at
  every step (the reference's `pre_process`), and updates the EMA with a Python loop over a
  dict of named parameters;
- decoding is one batch; unflattening is one model at a time: walk the model's
  named_parameters and assign `.data` slices (the reference's `partial_reverse_tomodel`).
DDIM (the reference v2 sampler, eta 0.05) keeps the same per-step habits.

Nothing here is used by pdiff_fast itself.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast.nn.models import BasicBlock  # the same CIFAR-style block as the reference

# --- autoencoder (v1 `ODEncoder2Decoder`, presets small / medium) -------------------------------

PRESETS = {  # fold_rate, kernel_size, encoder widths, decoder widths
    "small": (3, 3, [2, 2, 2, 2], [2, 64, 64, 8]),
    "medium": (5, 5, [4, 4, 4, 4], [4, 256, 256, 8]),
}


def _encoder_block(length, k, fold, cin, cout, first, last):
    return nn.Sequential(
        nn.Identity() if first else nn.LeakyReLU(),  # keeps the convs at indices 2 and 5 in every block
        nn.InstanceNorm1d(length),
        nn.Conv1d(1 if first else cin, cin, k, stride=1, padding=1),
        nn.LeakyReLU(),
        nn.InstanceNorm1d(length),
        nn.Conv1d(cin, cout, k, stride=fold, padding=0),
        nn.Tanh() if last else nn.Identity(),
    )


def _decoder_block(length, k, fold, cin, cout, last):
    return nn.Sequential(
        nn.LeakyReLU(),
        nn.InstanceNorm1d(length),
        nn.ConvTranspose1d(cin, cin, k, stride=fold, padding=0),
        nn.LeakyReLU(),
        nn.InstanceNorm1d(length),
        nn.Conv1d(cin, cout, k, stride=1, padding=fold if last else fold - 1),
    )


class _Stack(nn.Module):
    """Holds the blocks under the reference's attribute name (`encoder.encoder.*`, `decoder.decoder.*`)."""

    def __init__(self, attr: str, blocks: list[nn.Module]):
        super().__init__()
        self.attr = attr
        setattr(self, attr, nn.ModuleList(blocks))

    def forward(self, x):
        for block in getattr(self, self.attr):
            x = block(x)
        return x


class Autoencoder(nn.Module):
    def __init__(self, preset: str, in_dim: int, input_noise_factor=0.001, latent_noise_factor=0.1):
        super().__init__()
        fold, k, enc, dec = PRESETS[preset]
        self.in_dim, self.input_noise_factor, self.latent_noise_factor = in_dim, input_noise_factor, latent_noise_factor
        self.real_input_dim = (in_dim // fold**4 + 1) * fold**4
        enc_ch, dec_ch = [enc[0]] + enc, dec + [1]
        self.encoder = _Stack("encoder", [
            _encoder_block(self.real_input_dim // fold**i, k, fold, enc_ch[i], enc_ch[i + 1], i == 0, i == 3)
            for i in range(4)])
        self.decoder = _Stack("decoder", [
            _decoder_block(self.real_input_dim // fold**(4 - i), k, fold, dec_ch[i], dec_ch[i + 1], i == 3)
            for i in range(4)])

    def adjust_input(self, x):  # (B, D) -> (B, 1, real_input_dim); the zeros are made on the host
        x = x.view(x.size(0), 1, -1)
        pad = torch.zeros(x.shape[0], 1, self.real_input_dim - self.in_dim).to(x.device)
        return torch.cat([x, pad], dim=2)

    def encode(self, x):
        return self.encoder(self.adjust_input(x))  # (B, C, L)

    def decode(self, z):
        return self.decoder(z)[:, :, :self.in_dim].squeeze(1)  # (B, D)

    @staticmethod
    def add_noise(x, factor):
        if not isinstance(factor, float):
            factor = random.uniform(*factor)
        return torch.randn_like(x) * factor + (1 - factor) * x

    def forward(self, x):
        z = self.add_noise(self.encode(self.add_noise(x, self.input_noise_factor)), self.latent_noise_factor)
        return self.decode(torch.clamp(z, -1, 1))


# --- denoiser (v1 `AE_CNN_bottleneck`) -------------------------------------------------------------

def _denoiser_block(length, cin, cmid, cout, first=False):
    head = [] if first else [nn.LeakyReLU()]
    return nn.Sequential(*head, nn.InstanceNorm1d(length), nn.Conv1d(cin, cmid, 3, stride=1, padding=1),
                         nn.LeakyReLU(), nn.InstanceNorm1d(length), nn.Conv1d(cmid, cout, 3, stride=1, padding=1))


class Denoiser(nn.Module):
    def __init__(self, in_dim: int, in_channel: int = 1, time_step: int = 1000, channel_list=(64, 128, 256, 512)):
        super().__init__()
        c, L = list(channel_list), in_dim
        self.in_dim = in_dim
        self.enc1 = _denoiser_block(L, in_channel, c[0], c[0], first=True)
        self.enc2 = _denoiser_block(L, c[0], c[1], c[1])
        self.enc3 = _denoiser_block(L, c[1], c[2], c[2])
        self.enc4 = _denoiser_block(L, c[2], c[3], c[3])
        self.dec1 = _denoiser_block(L, c[3], c[2], c[2])
        self.dec2 = _denoiser_block(L, c[2], c[1], c[1])
        self.dec3 = _denoiser_block(L, c[1], c[0], c[0])
        self.dec4 = _denoiser_block(L, c[0], c[0], in_channel)
        self.time_encode = nn.Embedding(time_step, in_dim)

    def forward(self, input, time):
        shape = input.shape
        x = input.reshape(shape[0], 1, -1)  # (B, 1, in_dim)
        t = self.time_encode(time)[0, None, None].repeat((shape[0], 1, 1))  # sample 0's timestep for all
        e1 = self.enc1(x + t)
        e2 = self.enc2(e1 + t)
        e3 = self.enc3(e2 + t)
        e4 = self.enc4(e3 + t)
        d1 = self.dec1(e4 + t) + e3
        d2 = self.dec2(d1 + t) + e2
        d3 = self.dec3(d2 + t) + e1
        return self.dec4(d3 + t).reshape(shape)


# --- diffusion (v1 `core/system/ddpm.py`) ---------------------------------------------------------

def extract(table, t, shape):
    """The reference's per-call gather: table[t] reshaped to broadcast over `shape`."""
    table = table.to(t.device)
    out = torch.gather(table, 0, t.to(table.device))
    return out.reshape(shape[0], *([1] * (len(shape) - 1)))


class Diffusion:
    """Linear betas 1e-4 -> 2e-2, T = 1000, eps prediction, fixed-large variance, clamps."""

    def __init__(self, device, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        alphas = 1 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.tensor([1.0], dtype=torch.float64), ac[:-1]])
        post_var = betas * (1 - ac_prev) / (1 - ac)
        tables = {
            "betas": betas, "alphas_cumprod": ac, "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(), "sqrt_recip_alphas_cumprod": ac.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(), "posterior_variance": post_var,
            "posterior_log_variance_clipped": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
            "posterior_mean_coef2": (1 - ac_prev) * alphas.sqrt() / (1 - ac),
        }
        for name, value in tables.items():  # registered as float32 buffers in the reference
            setattr(self, name, value.float().to(device))
        self.num_timesteps = T

    def q_sample(self, x0, t, noise):
        return extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0 + \
            extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise

    def p_mean_variance(self, model, x, t):
        eps = model(x, t)
        # fixed-large: the table is rebuilt at every call, as the reference does
        log_var_table = torch.log(torch.cat((self.posterior_variance[1].view(1, 1), self.betas[1:].view(-1, 1)), 0)).view(-1)
        var = extract(self.betas, t, x.shape) * torch.ones_like(x)  # noqa: F841 (computed, unused, as in the reference)
        log_var = extract(log_var_table, t, x.shape) * torch.ones_like(x)
        x0 = extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - \
            extract(self.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps
        x0 = x0.clamp(min=-1, max=1)
        mean = extract(self.posterior_mean_coef1, t, x.shape) * x0 + extract(self.posterior_mean_coef2, t, x.shape) * x
        post_var = extract(self.posterior_variance, t, x.shape)  # noqa: F841 (q_posterior_mean_variance
        post_log_var = extract(self.posterior_log_variance_clipped, t, x.shape)  # noqa: F841  gathers these too)
        return mean, log_var, x0

    def p_sample(self, model, x, t):
        mean, log_var, x0 = self.p_mean_variance(model, x, t)
        noise = torch.randn(x.shape, dtype=x.dtype).to(x.device)  # host noise, copied every step
        nonzero = (1 - (t == 0).type(torch.float32)).view(x.shape[0], *([1] * (x.ndim - 1))).to(x.device)
        return torch.clamp(mean + nonzero * torch.exp(0.5 * log_var) * noise, min=-1, max=1), x0

    @torch.no_grad()
    def sample(self, model, shape, timesteps, device):
        """Ancestral sampling over `timesteps` (all 1000, descending, in the reference)."""
        img = torch.randn(shape, dtype=torch.float32).to(device)
        history = []
        for i in timesteps:
            t = torch.full((shape[0],), i, dtype=torch.int64).to(device)  # built on the host
            img, _ = self.p_sample(model, img, t)
            history.append(img.detach().cpu())
        return img

    @torch.no_grad()
    def sample_ddim(self, model, shape, timesteps, schedule, eta, device):
        """DDIM over `timesteps`, a prefix of the descending `schedule` (e.g. 50 of the 1000 steps)."""
        img = torch.randn(shape, dtype=torch.float32).to(device)
        history = []
        for i in timesteps:
            j = schedule.index(i)
            prev = schedule[j + 1] if j + 1 < len(schedule) else -1
            t = torch.full((shape[0],), i, dtype=torch.int64).to(device)
            eps = model(img, t)
            a_t = extract(self.alphas_cumprod, t, img.shape)
            if prev >= 0:
                a_prev = extract(self.alphas_cumprod, torch.full((shape[0],), prev, dtype=torch.int64).to(device), img.shape)
            else:
                a_prev = torch.ones(shape[0], *([1] * (img.ndim - 1))).to(device)
            x0 = ((img - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
            eps = (img - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
            noise = torch.randn(img.shape, dtype=img.dtype).to(device)  # host noise, copied every step
            img = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise
            history.append(img.detach().cpu())
        return img


# --- training loops --------------------------------------------------------------------------------

def train_autoencoder(ae: Autoencoder, params: torch.Tensor, steps: int, lr=1e-3, weight_decay=2e-6) -> None:
    """v1 `AE_DDPM.ae_forward` + manual optimisation, full batch."""
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=weight_decay)
    loss_func = nn.MSELoss()
    ae.train()
    for _ in range(steps):
        loss = loss_func(params, ae(params))
        loss.cpu().detach().mean().item()  # the reference logs the loss at every step
        opt.zero_grad()
        loss.backward()
        opt.step()


def accumulate(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    p_ema, p_model = dict(ema.named_parameters()), dict(model.named_parameters())
    for k in p_ema:
        p_ema[k].data.mul_(decay).add_(p_model[k].data, alpha=1 - decay)


def train_diffusion(diffusion: Diffusion, model: Denoiser, ema: Denoiser, ae: Autoencoder, params: torch.Tensor,
                    steps: int, lr=1e-3, weight_decay=2e-6) -> None:
    """v1 `DDPM.forward` inside `AE_DDPM.training_step`: the parameters are encoded at every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        batch = ae.encode(params)  # pre_process
        time = (torch.rand(batch.shape[0]) * diffusion.num_timesteps).type(torch.int64).to(batch.device)
        noise = torch.randn_like(batch)
        x_t = diffusion.q_sample(batch, time, noise)
        out = model(x_t, time)
        loss = torch.mean((noise - out).view(batch.shape[0], -1) ** 2, dim=1).mean()
        accumulate(ema, model, 0.9999)
        opt.zero_grad()
        loss.backward()
        opt.step()


# --- decode, then unflatten one model at a time -----------------------------------------------------

def partial_reverse_tomodel(flat: torch.Tensor, model: nn.Module, train_layer: list[str]) -> nn.Module:
    idx = 0
    for name, p in model.named_parameters():
        if name in train_layer:
            n = p.view(-1).shape[0]
            p.data = flat[idx:idx + n].reshape(p.shape)
            idx += n
    return model


@torch.no_grad()
def decode_and_unflatten(ae: Autoencoder, latents: torch.Tensor, latent_shape, model: nn.Module,
                         train_layer: list[str]) -> torch.Tensor:
    """v1 `post_process` (one decode batch), then each vector written into the model in turn; the
    reference evaluates model i right there (benchmarks/test_population.py times that part)."""
    params = ae.decode(latents.reshape(-1, *latent_shape))
    for i in range(params.shape[0]):
        partial_reverse_tomodel(params[i], model, train_layer)
    return params


# --- the network whose subset the resnet18 configuration generates -----------------------------------

class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (the reference's), only for its parameter names and shapes here."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

"""The reference v1 autoencoder rebuilt from stock nn modules run in order (nn.Sequential
semantics), which is how the reference computes; pdiff_fast's blocks run fused ops through the
dispatch point instead. Shared by the autoencoder tests as the independent reference."""
from torch import nn


class PlainAE(nn.Module):
    def __init__(self, in_dim, k, fold, enc, dec):
        super().__init__()
        n = 4
        self.in_dim, self.real = in_dim, (in_dim // fold**n + 1) * fold**n
        ch = [enc[0]] + enc
        self.encoder = nn.Module()
        self.encoder.encoder = nn.ModuleList(nn.Sequential(
            nn.Identity() if i == 0 else nn.LeakyReLU(), nn.InstanceNorm1d(1),
            nn.Conv1d(1 if i == 0 else ch[i], ch[i], k, 1, 1), nn.LeakyReLU(), nn.InstanceNorm1d(1),
            nn.Conv1d(ch[i], ch[i + 1], k, fold, 0), nn.Tanh() if i == n - 1 else nn.Identity()) for i in range(n))
        dch = dec + [1]
        self.decoder = nn.Module()
        self.decoder.decoder = nn.ModuleList(nn.Sequential(
            nn.LeakyReLU(), nn.InstanceNorm1d(1), nn.ConvTranspose1d(dch[i], dch[i], k, fold, 0),
            nn.LeakyReLU(), nn.InstanceNorm1d(1),
            nn.Conv1d(dch[i], dch[i + 1], k, 1, fold if i == n - 1 else fold - 1)) for i in range(n))

    def encode(self, x):
        x = nn.functional.pad(x.view(x.shape[0], 1, -1), (0, self.real - self.in_dim))
        for b in self.encoder.encoder:
            x = b(x)
        return x

    def decode(self, z):
        for b in self.decoder.decoder:
            z = b(z)
        return z[:, :, :self.in_dim].squeeze(1)

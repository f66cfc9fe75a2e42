"""pdiff_fast.diffusion.seeds.model_seed against splitmix64 written with NumPy's wrapping uint64
arithmetic (an independent implementation), over small, large and negative inputs."""
import numpy as np
import pytest

from pdiff_fast.diffusion.seeds import model_seed


def splitmix(seed: int, index: int) -> int:
    with np.errstate(over="ignore"):
        u = np.uint64
        z = u(seed % 2**64) * u(0x9E3779B97F4A7C15) + u(index % 2**64) * u(0xD1B54A32D192ED03) + u(0x632BE59BD9B4E019)
        z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
        return int((z ^ (z >> u(31))) >> u(1))


@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 - 1, 2**40 + 3, 2**64 - 1, -1, -12345])
@pytest.mark.parametrize("index", [0, 1, 2, 999, 2**33])
def test_model_seed_is_splitmix64_of_the_pair(seed, index):
    got = model_seed(seed, index)
    assert got == splitmix(seed, index) and 0 <= got < 2**63


def test_model_seeds_differ_by_model_and_by_run():
    seeds = {model_seed(s, i) for s in range(20) for i in range(50)}
    assert len(seeds) == 1000

"""Per-model seeds: model i of a run seeded s gets its own random stream, whatever chunk samples it."""
from __future__ import annotations

_MASK64 = (1 << 64) - 1


def model_seed(seed: int, index: int) -> int:
    """A 63-bit seed for model `index` of a run seeded `seed` (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1

"""The default sampler comes from the committed frontier (benchmarks/results/samplers_cpu.json): the
choice recomputed from its rows is the one recorded, and the configs name it."""
import json
from pathlib import Path

import pytest

from pdiff_fast.config import Config
from pdiff_fast.tasks.config import TaskConfig

RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "samplers_cpu.json"


@pytest.fixture(scope="module")
def frontier():
    return json.loads(RESULT.read_text())


def test_the_recorded_choice_is_computed_from_the_rows(frontier):
    from benchmarks.sampler_frontier import choose

    assert choose(frontier["pdiff"], frontier["tasks"]) == frontier["chosen"]


def test_the_configs_default_to_the_chosen_sampler(frontier):
    chosen = frontier["chosen"]
    for cfg in (Config(), TaskConfig()):
        assert (cfg.sampler, cfg.sample_steps) == ((chosen["sampler"], chosen["steps"]) if chosen else ("ddpm", 50))
    if chosen:
        assert Config().eta == TaskConfig().eta == chosen["eta"]


def test_the_choice_rule_on_boundaries(frontier):
    """Within LEVEL / TASK_LEVEL of DDPM 1000 on both runs with the same verdict, diagnostics never;
    fewest evaluations first."""
    from benchmarks.sampler_frontier import TASK_LEVEL, choose

    def p(sampler, steps, median, label="new", clamp=True, seed_offset=0):
        return {"sampler": sampler, "steps": steps, "nfe": steps, "eta": 0.0, "clamp": clamp,
                "seed_offset": seed_offset, "seconds": steps / 100, "generated": {"median": median},
                "verdict": {"label": label}}

    def t(sampler, steps, mean, clamp=True, seed_offset=0):
        return {"sampler": sampler, "steps": steps, "nfe": steps, "eta": 0.0, "clamp": clamp,
                "seed_offset": seed_offset, "seconds": steps / 100, "mean": mean}

    pd = [p("ddpm", 1000, 97.0), p("ddim", 10, 96.9), p("euler-a", 5, 97.5, clamp=False)]
    tk = [t("ddpm", 1000, 96.0), t("ddim", 10, 96.0 - TASK_LEVEL), t("euler-a", 5, 99.0, clamp=False)]
    assert choose(pd, tk)["label"] == "DDIM 10"
    tk[1]["mean"] = 96.0 - TASK_LEVEL - 0.01
    assert choose(pd, tk)["label"] == "DDPM 1000"  # the reference itself, when nothing else holds
    tk[1]["mean"] = 96.0
    pd[1]["generated"]["median"] = 96.89
    assert choose(pd, tk)["label"] == "DDPM 1000"  # the reference itself, when nothing else holds
    pd[1]["generated"]["median"] = 97.0
    pd[1]["verdict"]["label"] = "copies"
    assert choose(pd, tk)["label"] == "DDPM 1000"  # the reference itself, when nothing else holds

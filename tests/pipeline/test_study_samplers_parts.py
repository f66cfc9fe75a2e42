"""pdiff_fast.pipeline.study_samplers' parts, value by value: the settings and the frontier, which
rows are diagnostics, the labels, what a row keeps of a report, the choice of the fewest
evaluations at LEVEL's bounds and its tie-breaks, the readings and the table in full, and the
sampling and evaluation loop with its collaborators faked (what each is asked). Written against
the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math
import types

import pytest
import torch

from pdiff_fast.pipeline import study_samplers as ss
from pdiff_fast.pipeline.study_samplers import FRONTIER, LEVEL, Setting


def test_settings_and_their_defaults():
    s = Setting("ddim", 20)
    assert (s.sampler, s.steps, s.eta, s.clamp, s.seed_offset) == ("ddim", 20, 0.0, True, 0)
    assert Setting.of(("dpm++2m", 5, 0.5, False, 2)) == Setting("dpm++2m", 5, 0.5, False, 2)
    assert Setting.of(s) is s
    assert not s.diagnostic
    assert Setting("ddim", 20, clamp=False).diagnostic and Setting("ddim", 20, seed_offset=1).diagnostic
    assert not Setting("ddim", 20, eta=1.0).diagnostic


@pytest.mark.parametrize("row, want", [({}, False), ({"clamp": True, "seed_offset": 0}, False), ({"clamp": False}, True),
                                       ({"seed_offset": 2}, True), ({"seed_offset": -1}, True),
                                       ({"clamp": True, "seed_offset": 1}, True)])
def test_which_rows_are_diagnostics(row, want):
    assert ss.is_diagnostic(row) is want


def test_the_frontier():
    assert LEVEL == 0.1 and ss.STEP_COUNTS == (5, 10, 15, 20, 25, 50)
    assert FRONTIER[0] == Setting("ddpm", 1000)
    few = [(s.sampler, s.steps) for s in FRONTIER[1:25]]
    assert few == [(name, n) for name in ("ddim", "dpm++2m", "dpm++2m-sde", "euler-a") for n in (5, 10, 15, 20, 25, 50)]
    assert all(s.eta == 0.0 and s.clamp and not s.seed_offset for s in FRONTIER[:25])
    assert FRONTIER[25:29] == tuple(Setting("ddim", n, eta=1.0) for n in (10, 20, 25, 50))
    assert FRONTIER[29:33] == tuple(Setting(name, 20, clamp=False) for name in ("ddim", "dpm++2m", "dpm++2m-sde",
                                                                               "euler-a"))
    assert FRONTIER[33:] == (Setting("ddpm", 1000, seed_offset=1),)


@pytest.mark.parametrize("row, want", [
    ({"sampler": "dpm++2m", "steps": 20}, "DPM++2M 20"),
    ({"sampler": "ddim", "steps": 20, "eta": 1.0}, "DDIM 20 eta 1"),
    ({"sampler": "ddim", "steps": 20, "eta": 0.25, "clamp": True, "seed_offset": 0}, "DDIM 20 eta 0.25"),
    ({"sampler": "euler-a", "steps": 20, "clamp": False}, "EULER-A 20 unclamped"),
    ({"sampler": "ddpm", "steps": 1000, "seed_offset": 1}, "DDPM 1000 seed+1"),
    ({"sampler": "ddim", "steps": 5, "eta": 0.5, "clamp": False, "seed_offset": 3}, "DDIM 5 eta 0.5 unclamped seed+3"),
])
def test_labels(row, want):
    assert ss.label(row) == want


def a_report(median=97.0, label="close"):
    return {"generated": {"best": median + 1, "mean": median - 1, "median": median, "n": 4},
            "generated_nonfinite": 1, "original": {"median": 1.0},
            "iou": {"generated_original_max_mean": 0.25, "original_original_mean": 0.5},
            "novelty": {"sets": {"generated": {"distance_ratio": 0.5}, "original": {}}},
            "verdict": {"label": label, "accuracy": "above", "distance_ratio": 0.5, "text": "...", "tau": 1.0}}


def test_what_a_row_keeps_of_a_report():
    assert ss.generated_fields(a_report()) == {
        "generated": {"best": 98.0, "mean": 96.0, "median": 97.0, "n": 4}, "generated_nonfinite": 1,
        "max_iou_mean": 0.25, "novelty": {"distance_ratio": 0.5},
        "verdict": {"label": "close", "accuracy": "above", "distance_ratio": 0.5}}


def row(sampler, steps, seconds, median, label="close", **more):
    return {"sampler": sampler, "steps": steps, "seconds": seconds, "verdict": {"label": label},
            "generated": {"median": median, "mean": median - 1, "best": median + 1}, **more}


def test_the_fewest_evaluations_at_levels_bounds():
    assert ss.fewest_level_steps([]) is None
    ref = row("ddpm", 1000, 10.0, 97.0)
    assert ss.fewest_level_steps([ref]) is ref
    inside = row("ddim", 10, 1.0, 96.9)  # 97.0 - LEVEL: kept
    assert ss.fewest_level_steps([ref, inside]) is inside
    outside = row("ddim", 10, 1.0, 96.89)
    assert ss.fewest_level_steps([ref, outside]) is ref
    better = row("ddim", 10, 1.0, 99.0)  # above the reference is kept too
    assert ss.fewest_level_steps([ref, better]) is better
    assert ss.fewest_level_steps([ref, row("ddim", 10, 1.0, math.nan)]) is ref
    assert ss.fewest_level_steps([ref, row("ddim", 10, 1.0, math.inf)]) is ref  # a non-finite median is no level
    assert ss.fewest_level_steps([ref, row("ddim", 10, 1.0, 97.0, label="copies")]) is ref
    assert ss.fewest_level_steps([ref, row("ddim", 10, 1.0, 97.0, clamp=False)]) is ref
    assert ss.fewest_level_steps([ref, row("ddim", 10, 1.0, 97.0, seed_offset=1)]) is ref
    nan_ref = row("ddpm", 1000, 10.0, math.nan)
    assert ss.fewest_level_steps([nan_ref, row("ddim", 10, 1.0, 97.0)]) is None


def test_the_fewest_evaluations_tie_breaks():
    ref = row("ddpm", 1000, 10.0, 97.0)
    a, b = row("ddim", 10, 2.0, 97.0), row("euler-a", 10, 1.0, 97.05)
    assert ss.fewest_level_steps([ref, a, b]) is b  # the same evaluations: the higher median
    c = row("dpm++2m", 10, 0.5, 97.05)
    assert ss.fewest_level_steps([ref, a, b, c]) is c  # and then the shorter time
    d = row("dpm++2m", 20, 0.1, 99.0, nfe=5)  # the evaluations as recorded, where recorded
    assert ss.fewest_level_steps([ref, a, b, c, d]) is d


def test_the_readings_in_full():
    rows = [row("ddpm", 1000, 10.0, 97.0), row("ddim", 10, 0.25, 96.95, eta=1.0), row("euler-a", 5, 0.0, 90.0, "new")]
    assert ss.read_samplers(rows) == [
        "DDIM 10 eta 1: median 96.95 (-0.05 against DDPM 1000), mean 95.95, 40.0x faster; verdict close.",
        "EULER-A 5: median 90.00 (-7.00 against DDPM 1000), mean 89.00, 10000000000.0x faster; verdict new.",
        "Fewest denoiser evaluations within 0.1 points of DDPM 1000's median, same verdict: DDIM 10 eta 1 "
        "(0.25 s against 10.00 s)."]
    rows[1]["generated"]["median"] = 90.0
    assert ss.read_samplers(rows)[-1] == ("Fewest denoiser evaluations within 0.1 points of DDPM 1000's median, same "
                                          "verdict: DDPM 1000 (10.00 s against 10.00 s).")
    rows[0]["generated"]["median"] = math.nan
    assert len(ss.read_samplers(rows)) == 2  # no choice: no sentence
    assert ss.read_samplers([]) == []
    assert ss.read_samplers(rows[:1]) == []


def test_the_table_in_full():
    rows = [{**row("ddpm", 1000, 12.5, 97.0), "generated_nonfinite": 0, "novelty": {"distance_ratio": 0.5},
             "max_iou_mean": 0.25},
            {**row("ddim", 20, 0.5, 96.0, eta=1.0, clamp=False, seed_offset=2), "generated_nonfinite": 3,
             "novelty": {"distance_ratio": None}, "max_iou_mean": 0.125}]
    lines = ss.format_samplers(rows, ratio=lambda v: f"r{v}", acc=lambda g: f"a{g['median']}")
    assert lines == [
        "## Sampler trade-off", "",
        "| sampler | denoiser evaluations | eta | x_t clamp | seed | sampling time (s) | generated best / mean / median "
        "| nonfinite | nearest-original distance / tau | max IoU (mean) | verdict |",
        "|---|---:|---:|---|---|---:|---|---:|---:|---:|---|",
        "| ddpm | 1000 | 0 | yes | run | 12.50 | a97.0 | 0 | r0.5 | 0.250 | close |",
        "| ddim | 20 | 1 | no | +2 | 0.50 | a96.0 | 3 | rNone | 0.125 | close |",
        "",
        "- DDIM 20 eta 1 unclamped seed+2: median 96.00 (-1.00 against DDPM 1000), mean 95.00, 25.0x faster; "
        "verdict close.",
        "- Fewest denoiser evaluations within 0.1 points of DDPM 1000's median, same verdict: DDPM 1000 "
        "(12.50 s against 12.50 s).",
        ""]


# --- the loop, its collaborators faked -------------------------------------------------------------

class FakeStd:
    def inverse(self, flat):
        return flat * 10


def fake_run(device="cpu"):
    config = types.SimpleNamespace(num_samples=3, seed=40, sample_grain=7, memory_budget_mb=5)
    pop = types.SimpleNamespace(spec="SPEC", params=torch.ones(2, 4))
    data = types.SimpleNamespace(x_test=torch.zeros(5, 2), y_test=torch.zeros(5, dtype=torch.long))
    data.to = lambda device: data
    ema = object()
    p = types.SimpleNamespace(config=config, device=torch.device(device), population=lambda: pop,
                              new_model=lambda: "MODEL", data=data, load_models=None)
    return p, pop, data, ema


def test_sample_timed_asks_generate_for_the_setting(monkeypatch):
    import pdiff_fast.diffusion.sample as sample

    p, _, _, ema = fake_run()
    asked = {}

    def generate(ae, model, scheduler, n, **kw):
        asked.update(ae=ae, model=model, scheduler=scheduler, n=n, **kw)
        return torch.full((n, 4), 2.0)

    monkeypatch.setattr(sample, "generate", generate)
    models = ("AE", types.SimpleNamespace(ema=ema), FakeStd())
    flat, seconds = ss.sample_timed(p, models, Setting("ddim", 7, eta=0.5, clamp=False), 3, seed=41)
    assert torch.equal(flat, torch.full((3, 4), 20.0)) and 0 <= seconds < 60
    s = asked.pop("scheduler")
    assert type(s).__name__ == "DDIMScheduler" and (s.num_inference_steps, s.eta, s.clamp_sample) == (7, 0.5, False)
    assert asked == {"ae": "AE", "model": ema, "n": 3, "device": p.device, "seed": 41, "grain": 7,
                     "memory_budget_bytes": 5 << 20, "progress": False}
    flat, _ = ss.sample_timed(p, ("AE", types.SimpleNamespace(ema=ema), None), Setting("euler-a", 4), 2, seed=1)
    assert torch.equal(flat, torch.full((2, 4), 2.0))  # no standardiser: as sampled
    assert asked["scheduler"].clamp_sample is True and len(asked["scheduler"].timesteps()) == 4


def test_run_samplers_samples_and_evaluates_every_setting_at_every_seed(monkeypatch):
    import pdiff_fast.evaluation.judge as judge
    import pdiff_fast.pipeline.collect as collect

    p, pop, data, ema = fake_run()
    base = types.SimpleNamespace(to=lambda device: "BASE")
    monkeypatch.setattr(collect, "rebuild_base", lambda model, population: base if (model, population) == ("MODEL", pop) else None)
    loaded = []
    p.load_models = lambda: loaded.append(1) or ("AE", types.SimpleNamespace(ema=ema), None)
    sampled, evaluated = [], []

    def sample_timed(p_, models, setting, n, seed):
        assert p_ is p and models == ("AE", models[1], None) and models[1].ema is ema
        sampled.append((setting, n, seed))
        return torch.full((n, 4), float(len(sampled))), 0.5 * len(sampled)

    def evaluate(base_, spec, original, generated, x, y, **kw):
        evaluated.append((base_, spec, original, generated, x, y, kw))
        return a_report(median=90.0 + len(evaluated))

    monkeypatch.setattr(ss, "sample_timed", sample_timed)
    monkeypatch.setattr(judge, "evaluate", evaluate)
    logs = []
    rows = ss.run_samplers(p, [("ddim", 5), Setting("ddpm", 1000, seed_offset=1)], log=logs.append, seed_offsets=(0, 2))
    assert loaded == [1]  # the models loaded once
    assert sampled == [(Setting("ddim", 5), 3, 40), (Setting("ddim", 5, seed_offset=2), 3, 42),
                       (Setting("ddpm", 1000, seed_offset=1), 3, 41), (Setting("ddpm", 1000, seed_offset=3), 3, 43)]
    for i, (b, spec, original, generated, x, y, kw) in enumerate(evaluated):
        assert (b, spec, x, y) == ("BASE", "SPEC", data.x_test, data.y_test)
        assert torch.equal(original, pop.params) and torch.equal(generated, torch.full((3, 4), float(i + 1)))
        assert kw == {"noise_sigmas": [], "seed": 40, "memory_budget_bytes": 5 << 20}
    assert [(r["sampler"], r["steps"], r["seed_offset"], r["nfe"], r["seconds"]) for r in rows] == [
        ("ddim", 5, 0, 5, 0.5), ("ddim", 5, 2, 5, 1.0), ("ddpm", 1000, 1, 1000, 1.5), ("ddpm", 1000, 3, 1000, 2.0)]
    assert rows[0] == {"sampler": "ddim", "steps": 5, "eta": 0.0, "clamp": True, "seed_offset": 0, "nfe": 5,
                       "seconds": 0.5, **ss.generated_fields(a_report(91.0))}
    assert logs == ["study: sampler DDIM 5: 0.50 s, generated median 91.00",
                    "study: sampler DDIM 5 seed+2: 1.00 s, generated median 92.00",
                    "study: sampler DDPM 1000 seed+1: 1.50 s, generated median 93.00",
                    "study: sampler DDPM 1000 seed+3: 2.00 s, generated median 94.00"]
    assert len(ss.run_samplers(p, [("ddim", 5)], log=logs.append)) == 1  # one seed by default


def test_the_frontier_plot(monkeypatch, tmp_path):
    import pdiff_fast.io as io

    saved = {}

    def save_figure(fig, path):
        ax = fig.axes[0]
        band = ax.patches[0]
        lines = [line for line in ax.get_lines()]
        saved.update(markers={line.get_marker() for line in lines}, marker_sizes={line.get_markersize() for line in lines},
                     colours=[line.get_color() for line in lines], title_size=ax.title.get_fontsize(),
                     legend_size=ax.get_legend().get_texts()[0].get_fontsize(), legend_columns=ax.get_legend()._ncols)
        saved.update(size=list(fig.get_size_inches()), band=(band.get_y(), band.get_y() + band.get_height()),
                     band_colour=band.get_facecolor(), legend=[t.get_text() for t in ax.get_legend().get_texts()])
        saved.update(title=ax.get_title(), xscale=ax.get_xscale(), xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel(),
                     lines={line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle())
                            for line in ax.get_lines()}, path=path)
        return path

    monkeypatch.setattr(io, "save_figure", save_figure)
    import pdiff_fast.pipeline.report as report
    monkeypatch.setattr(report, "_save", save_figure)
    rows = [row("ddpm", 1000, 10.0, 97.0), row("ddim", 20, 1.0, 96.95), row("ddim", 10, 0.5, 96.0),
            row("ddim", 20, 1.0, 97.0, clamp=False), row("ddpm", 1000, 10.0, 97.2, seed_offset=1)]
    assert ss.plot_samplers(rows, tmp_path / "f.png") == tmp_path / "f.png"
    assert saved["title"] == "Fewest evaluations within 0.1 points of DDPM 1000: DDIM 20"
    assert saved["size"] == [6.5, 4.0] and saved["band_colour"] == (0.9, 0.9, 0.9, 1.0)
    assert saved["markers"] == {"o"} and saved["marker_sizes"] == {4.0}
    assert saved["colours"] == ["C0", "C1", "C2", "C3"]
    assert saved["title_size"] == 9.0 and saved["legend_size"] == 6.0 and saved["legend_columns"] == 2
    assert saved["band"] == pytest.approx((96.9, 97.1))  # DDPM 1000's median ± LEVEL
    assert saved["legend"][0] == "DDPM 1000 median ± 0.1" and saved["legend"][1:] == [
        "ddpm", "ddim", "ddim unclamped", "ddpm seed+1"]
    assert saved["xscale"] == "log" and saved["xlabel"] == "denoiser evaluations per model"
    assert saved["ylabel"] == "generated median test accuracy (%)"
    assert saved["lines"] == {"ddpm": ([1000], [97.0], "-"), "ddim": ([10, 20], [96.0, 96.95], "-"),
                              "ddim unclamped": ([20], [97.0], ":"), "ddpm seed+1": ([1000], [97.2], ":")}
    rows[1]["generated"]["median"] = 90.0
    rows[0]["verdict"]["label"] = "new"
    ss.plot_samplers(rows[:3], tmp_path / "g.png")
    assert saved["title"] == "Fewest evaluations within 0.1 points of DDPM 1000: DDPM 1000"
    rows[0]["generated"]["median"] = math.nan  # nothing is level with a NaN reference
    ss.plot_samplers(rows[:3], tmp_path / "h.png")
    assert saved["title"] == "Fewest evaluations within 0.1 points of DDPM 1000: none"

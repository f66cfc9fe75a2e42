"""RunDirectory's provenance and checkpoint rules one by one, on a bare object with planted files
(no pipeline run): the settings and inputs checks, config.json updates, timings, which checkpoint
is resumed, and when a trained autoencoder counts as current. Written against the mutants mutmut
left alive (docs/mutation-scores.md); tests/pipeline/test_run_dir.py replays the same rules on
real runs."""
import os
import time

import pytest
import torch

from pdiff_fast import Config
from pdiff_fast.io import load_artifact, load_json, read_digest, save_json, save_tensors
from pdiff_fast.pipeline.run_dir import STEP_FIELDS, RunDirectory, StaleArtifact, prepare_run_dir


class Bare(RunDirectory):
    def __init__(self, run_dir, allow_stale=False, **cfg):
        self.run_dir, self.allow_stale = run_dir, allow_stale
        self.config = Config(device="cpu", **cfg)
        self.device = torch.device("cpu")
        self.logs, self.timings = [], {}

    def log(self, line):
        self.logs.append(line)

    def denoiser_channels(self):
        return [1, 2, 3, 4]

    def autoencoder_preset(self):
        return "small"


@pytest.fixture
def rd(tmp_path):
    return Bare(prepare_run_dir(tmp_path / "run"))


def test_fields_record_each_steps_settings_and_the_seed(rd):
    assert rd._fields("population") == {**{f: rd.config.to_dict()[f] for f in STEP_FIELDS["population"]}, "seed": 0}
    assert rd._fields("diffusion")["denoiser_channels"] == [1, 2, 3, 4]
    assert rd._fields("autoencoder")["autoencoder"] == "small"
    assert rd._fields("generated", num_samples=7)["num_samples"] == 7  # what actually ran
    assert rd._record("generated", {"diffusion": "d"}) == {"config": rd._fields("generated"),
                                                           "inputs": {"diffusion": "d"}}


def test_settings_check_names_the_field_and_the_step(rd):
    meta = rd._record("autoencoder", {})
    rd._check_settings("autoencoder", meta)
    meta["config"]["ae_steps"] += 1
    with pytest.raises(StaleArtifact, match=r"^autoencoder\.safetensors was made with ae_steps=\d+ but the config "
                                            r"says ae_steps=\d+: rerun `pdiff-fast train` to apply it, or leave "
                                            r"ae_steps unchanged$"):
        rd._check_settings("autoencoder", meta)
    meta["config"]["seed"] = 5  # a new seed is a new draw, not a stale file
    del meta["config"]["ae_steps"]  # a field the artifact did not record is not compared
    rd._check_settings("autoencoder", meta)
    rd._check_settings("autoencoder", {})  # no recorded settings (a foreign file)
    Bare(rd.run_dir, allow_stale=True)._check_settings("autoencoder", {"config": {"ae_steps": -1}})


def test_inputs_check_compares_only_inputs_both_sides_know(rd):
    meta = {"inputs": {"population": "aaa", "autoencoder": "bbb"}}
    rd._check_inputs("diffusion", meta, {"population": "aaa"})
    rd._check_inputs("diffusion", meta, {"population": None, "generated": "zzz"})
    rd._check_inputs("diffusion", {}, {"population": "aaa"})  # nothing recorded
    with pytest.raises(StaleArtifact, match=r"^diffusion\.safetensors is stale: it was made from another "
                                            r"autoencoder\.safetensors than the one in .*; rerun `pdiff-fast train` "
                                            r"\(or pass --allow-stale\)$"):
        rd._check_inputs("diffusion", meta, {"autoencoder": "ccc"})
    Bare(rd.run_dir, allow_stale=True)._check_inputs("diffusion", meta, {"autoencoder": "ccc"})


def test_config_json_takes_a_steps_fields_over_what_is_on_disk(rd):
    rd._update_config_json("population")
    assert load_json(rd.path("config")) == rd.config.to_dict()
    newer = Bare(rd.run_dir, ae_steps=77, num_samples=5)
    newer._update_config_json("autoencoder")
    on_disk = load_json(rd.path("config"))
    assert on_disk["ae_steps"] == 77 and on_disk["num_samples"] == rd.config.num_samples  # only its fields
    rd.path("config").write_text("{not json")
    newer._update_config_json("generated")
    assert load_json(rd.path("config")) == newer.config.to_dict()


def test_timings_are_merged_into_the_file_after_the_artifact(rd):
    save_json(rd.path("timings"), {"collect": 1.5})
    assert rd._timed("train", lambda: 42) == 42
    assert load_json(rd.path("timings")) == {"collect": 1.5}  # not before the step's artifact is saved
    rd._bookkeeping("population", config=False)
    got = load_json(rd.path("timings"))
    assert got["collect"] == 1.5 and got["train"] == rd.timings["train"] >= 0
    rd.path("timings").write_text("[broken")
    rd._timed("sample", lambda: None)
    rd._bookkeeping("generated", config=False)
    assert set(load_json(rd.path("timings"))) == {"train", "sample"}
    assert not rd.path("config").exists()


def test_bookkeeping_that_fails_warns_and_keeps_the_artifact(rd, monkeypatch):
    """A full disk after the artifact is saved: one warning naming the artifact, no exception."""
    import errno

    from pdiff_fast.pipeline import run_dir

    def full(path, obj):
        raise OSError(errno.ENOSPC, "could not write it: No space left on device", str(path))
    monkeypatch.setattr(run_dir, "save_json", full)
    rd.timings["sample"] = 1.0
    rd._bookkeeping("generated")
    assert len(rd.logs) == 1 and rd.logs[0].startswith("warning: generated.safetensors is saved, but")
    assert "No space left on device" in rd.logs[0]


def test_deeply_nested_timings_are_replaced(rd):
    rd.path("timings").write_text("[" * 100_000)
    rd.timings["x"] = 2.0
    rd._bookkeeping("generated", config=False)
    assert load_json(rd.path("timings")) == {"x": 2.0}


def checkpoint(rd, artifact, inputs, step=5, **changes):
    meta = {**rd._record(artifact, inputs), "device": "cpu", "step": step}
    meta["config"].update(changes)
    save_tensors(rd.path(f"{artifact}_ckpt"), {"w": torch.ones(2)}, meta)


def test_a_checkpoint_resumes_only_when_everything_but_the_step_count_matches(rd):
    inputs = {"population": "p"}
    assert rd._checkpoint_state("autoencoder", inputs, restart=False) is None and rd.logs == []
    checkpoint(rd, "autoencoder", inputs, step=5, ae_steps=rd.config.ae_steps + 100)  # more steps asked: fine
    tensors, meta = rd._checkpoint_state("autoencoder", inputs, restart=False)
    assert meta["step"] == 5 and torch.equal(tensors["w"], torch.ones(2))
    assert rd.logs[-1] == "resuming autoencoder training from step 5 (autoencoder.ckpt.safetensors)"
    assert rd._checkpoint_state("autoencoder", inputs, restart=True) is None
    refused = "autoencoder.ckpt.safetensors was made from other inputs or settings; training autoencoder from the start"
    for inputs_, kw in [({"population": "q"}, {}), (inputs, {"ae_lr": 9.0}), (inputs, {"step": rd.config.ae_steps + 1})]:
        step = kw.pop("step", 5)
        checkpoint(rd, "autoencoder", inputs, step=step, **kw)
        rd.logs.clear()
        assert rd._checkpoint_state("autoencoder", inputs_, restart=False) is None and rd.logs == [refused]
    checkpoint(rd, "autoencoder", inputs, step=rd.config.ae_steps)  # exactly the steps asked: still resumes
    assert rd._checkpoint_state("autoencoder", inputs, restart=False) is not None
    meta = {**rd._record("autoencoder", inputs), "device": "cuda", "step": 1}
    save_tensors(rd.path("autoencoder_ckpt"), {"w": torch.ones(2)}, meta)
    assert rd._checkpoint_state("autoencoder", inputs, restart=False) is None
    rd.path("autoencoder_ckpt").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    rd.logs.clear()
    assert rd._checkpoint_state("autoencoder", inputs, restart=False) is None
    assert len(rd.logs) == 1 and rd.logs[0].startswith("ignoring an unreadable checkpoint (")


def test_the_checkpointer_records_inputs_settings_and_device(rd):
    rd._checkpointer("diffusion", {"autoencoder": "a"})({"w": torch.zeros(1)}, {"step": 3})
    _, meta = rd._checkpoint_state("diffusion", {"autoencoder": "a"}, restart=False)
    assert meta["device"] == "cpu" and meta["step"] == 3 and meta["inputs"] == {"autoencoder": "a"}
    assert meta["config"] == rd._fields("diffusion")


def plant_trained_autoencoder(rd, population="pop", config=None, ckpt_from=None):
    meta = rd._record("autoencoder", {"population": population})
    if config is not None:
        meta["config"] = config
    save_tensors(rd.path("autoencoder"), {"w": torch.ones(1)}, meta)
    digest = read_digest(rd.path("autoencoder"))
    save_tensors(rd.path("diffusion_ckpt"), {"w": torch.ones(1)},
                 {"inputs": {"autoencoder": ckpt_from or digest}})


def test_the_autoencoder_is_current_only_when_population_settings_and_checkpoint_agree(rd):
    assert rd._autoencoder_is_current("pop") is False  # nothing on disk
    plant_trained_autoencoder(rd)
    assert rd._autoencoder_is_current("pop") is True
    assert rd._autoencoder_is_current("other population") is False
    plant_trained_autoencoder(rd, config={**rd._fields("autoencoder"), "ae_steps": 1})
    assert rd._autoencoder_is_current("pop") is False
    plant_trained_autoencoder(rd, ckpt_from="another autoencoder")
    assert rd._autoencoder_is_current("pop") is False
    plant_trained_autoencoder(rd)
    rd.path("diffusion_ckpt").unlink()
    assert rd._autoencoder_is_current("pop") is False
    plant_trained_autoencoder(rd)
    rd.path("autoencoder").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    assert rd._autoencoder_is_current("pop") is False
    save_tensors(rd.path("autoencoder"), {"w": torch.ones(1)}, {})  # no inputs, no config recorded
    assert rd._autoencoder_is_current("pop") is False


def test_prepare_refuses_a_file_and_cleans_old_temporaries(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file: the run directory is a file, not a directory"):
        prepare_run_dir(tmp_path / "file")
    d = prepare_run_dir(tmp_path / "a" / "b")
    assert d.is_dir()


def test_save_and_load_carry_the_record_and_check_inputs(rd):
    digest = rd._save("autoencoder", {"w": torch.arange(3.0)}, {"note": 1}, {"population": "s"}, ae_steps=5)
    tensors, meta, got = rd._load("autoencoder", {"population": "s"})
    assert got == digest == read_digest(rd.path("autoencoder")) and torch.equal(tensors["w"], torch.arange(3.0))
    assert meta["note"] == 1 and meta["inputs"] == {"population": "s"} and meta["config"]["ae_steps"] == 5
    with pytest.raises(StaleArtifact, match="autoencoder.safetensors is stale"):
        rd._load("autoencoder", {"population": "other"})
    assert rd._record("generated", {}, num_samples=7)["config"]["num_samples"] == 7


def test_prepare_twice_and_an_unwritable_directory(tmp_path, monkeypatch):
    d = prepare_run_dir(tmp_path / "r")
    assert prepare_run_dir(d) == d  # an existing run directory is fine
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK | os.X_OK else real(p, mode))
    with pytest.raises(PermissionError, match=r"^.*/r: the run directory is not writable$"):
        prepare_run_dir(d)


def test_timings_start_a_file_and_measure_seconds(rd):
    assert not rd.path("timings").exists()
    rd._timed("collect", lambda: time.sleep(0.01))
    rd._bookkeeping("population", config=False)
    assert 0.01 <= load_json(rd.path("timings"))["collect"] < 10


def test_collect_rewrites_config_json_whole(rd):
    save_json(rd.path("config"), {**rd.config.to_dict(), "ae_steps": 77})
    rd._update_config_json("population")
    assert load_json(rd.path("config")) == rd.config.to_dict()


def test_damaged_or_foreign_checkpoints_are_not_resumed(rd):
    inputs = {"population": "p"}
    save_tensors(rd.path("autoencoder_ckpt"), {"w": torch.ones(2)}, {"inputs": inputs, "device": "cpu", "step": 1})
    assert rd._checkpoint_state("autoencoder", inputs, restart=False) is None  # no settings recorded
    checkpoint(rd, "autoencoder", inputs, step=5)
    data = rd.path("autoencoder_ckpt").read_bytes()
    rd.path("autoencoder_ckpt").write_bytes(data[:-4])  # header intact, tensors cut short
    rd.logs.clear()
    assert rd._checkpoint_state("autoencoder", inputs, restart=False) is None
    assert len(rd.logs) == 1 and rd.logs[0].startswith("ignoring an unreadable checkpoint (")
    plant_trained_autoencoder(rd)
    save_tensors(rd.path("diffusion_ckpt"), {"w": torch.ones(1)}, {})  # a checkpoint that records no inputs
    assert rd._autoencoder_is_current("pop") is False


def test_bookkeeping_updates_config_json_by_default(rd):
    rd._bookkeeping("population")  # the population writes the whole config
    rd.config = rd.config.replace(num_samples=7)
    rd._bookkeeping("generated")
    assert load_json(rd.path("config"))["num_samples"] == 7


def test_timings_that_are_not_an_object_are_replaced(rd):
    rd.path("timings").write_text("[1, 2]")
    rd.timings["sample"] = 3.0
    rd._bookkeeping("generated", config=False)
    assert load_json(rd.path("timings")) == {"sample": 3.0} and rd.logs == []


def test_read_remade_by_names_the_step_that_remakes_a_file(rd):
    from pdiff_fast.io import DamagedFile
    from pdiff_fast.pipeline.run_dir import read_remade_by

    def damaged():
        raise DamagedFile(rd.path("generated"), "a" * 32, "b" * 32)
    with pytest.raises(DamagedFile) as exc:
        read_remade_by(damaged, "pdiff-fast sample")
    assert (exc.value.path, exc.value.recorded, exc.value.found) == (rd.path("generated"), "a" * 32, "b" * 32)
    assert str(exc.value).endswith(f"(recorded {'a' * 32}, found {'b' * 32}: bit rot, a partial copy or an edit); "
                                   "rerun `pdiff-fast sample` to remake it")

    def corrupt():
        raise ValueError("x.safetensors: corrupt\n  or truncated")
    with pytest.raises(ValueError) as exc:
        read_remade_by(corrupt, "pdiff-fast collect")
    assert str(exc.value) == "x.safetensors: corrupt or truncated; rerun `pdiff-fast collect` to remake it"

    def stale():
        raise StaleArtifact("stale as it is")
    with pytest.raises(StaleArtifact, match="^stale as it is$"):
        read_remade_by(stale, "pdiff-fast train")
    assert read_remade_by(lambda: 5, "x") == 5


def test_a_missing_artifact_names_its_step_when_read(rd):
    torch.manual_seed(0)
    save_tensors(rd.path("generated"), {"params": torch.ones(2)}, {})
    raw = bytearray(rd.path("generated").read_bytes())
    raw[-1] ^= 1
    rd.path("generated").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"rerun `pdiff-fast sample` to remake it$"):
        rd._read("generated", lambda p: load_artifact(p))


def _report_with(rd, **inputs):
    digests = {name: save_tensors(rd.path(name), {"params": torch.full((2,), float(i))}, {})
               for i, name in enumerate(("population", "generated"))}
    return digests, {"per_model": {}, "inputs": {**digests, **inputs}}


def test_check_report_inputs_reads_and_compares_each_input(rd):
    from pdiff_fast.pipeline.run_dir import check_report_inputs

    digests, report = _report_with(rd)
    check_report_inputs(rd, report, "pdiff-fast evaluate")  # both current: nothing raised
    save_tensors(rd.path("generated"), {"params": torch.zeros(3)}, {})
    with pytest.raises(StaleArtifact) as exc:
        check_report_inputs(rd, report, "pdiff-fast evaluate")
    assert str(exc.value) == ("report.json is stale: generated.safetensors changed since it was evaluated; rerun "
                              "`pdiff-fast evaluate` (or pass --allow-stale)")
    with pytest.raises(StaleArtifact):  # a skipped name first does not end the check
        check_report_inputs(rd, {"inputs": {"other": "o" * 32, "generated": digests["generated"]}}, "x")
    rd.allow_stale = True
    check_report_inputs(rd, report, "pdiff-fast evaluate")
    rd.allow_stale = False
    raw = bytearray(rd.path("population").read_bytes())
    raw[-1] ^= 1
    rd.path("population").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"population\.safetensors: damaged: .*rerun `pdiff-fast collect` to remake"):
        check_report_inputs(rd, {"inputs": {"population": digests["population"]}}, "pdiff-fast evaluate")


def test_check_report_inputs_skips_what_it_cannot_read(rd):
    from pdiff_fast.pipeline.run_dir import check_report_inputs

    _, report = _report_with(rd, report="r" * 32, unknown="u" * 32)
    save_json(rd.path("report"), report)  # the report itself is never one of its inputs
    rd.path("population").unlink()  # gone: the report is all that is left of it
    check_report_inputs(rd, {**report, "inputs": {**report["inputs"], "population": "p" * 32}}, "x")
    check_report_inputs(rd, {"per_model": {}}, "x")  # no inputs recorded
    with pytest.raises(ValueError) as exc:
        check_report_inputs(rd, {"inputs": [1]}, "pdiff-fast evaluate")
    assert str(exc.value) == (f"{rd.path('report')}: not a report of this package (its inputs are not an object); "
                              "rerun `pdiff-fast evaluate`")

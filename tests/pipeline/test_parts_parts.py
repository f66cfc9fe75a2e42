"""pdiff_fast.pipeline.parts one piece at a time: the device choice, what the constructor sets up,
the lazily loaded data and models, the autoencoder / denoiser / scheduler the config names, and the
trained models loaded back from planted files (a tiny MLP's subset, a tiny autoencoder and
denoiser: no training). Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_pipeline.py runs the same parts through real runs."""
import json

import pytest
import torch

from pdiff_fast import Config, distributed
from pdiff_fast import data as data_lib
from pdiff_fast.io import read_digest
from pdiff_fast.nn import denoiser as dn_lib
from pdiff_fast.nn.autoencoder_choice import build_autoencoder
from pdiff_fast.nn.models import build_model
from pdiff_fast.params import ParamSpec, Standardizer
from pdiff_fast.pipeline import parts as parts_lib
from pdiff_fast.pipeline.collect import Population
from pdiff_fast.pipeline.parts import PDiffParts, pick_device
from pdiff_fast.pipeline.run_dir import StaleArtifact


def tiny_data():
    g = torch.Generator().manual_seed(0)
    return data_lib.TensorData("tiny", torch.randn(12, 6, generator=g), torch.arange(12) % 3,
                               torch.randn(9, 6, generator=g), torch.arange(9) % 3, 3)


def tiny_config(**kw):
    base = dict(dataset="tiny", model="mlp", device="cpu", denoiser_channels=[2, 3, 4, 5], k=4, seed=3)
    return Config(**(base | kw))


def make(tmp_path, config=None, **kw):
    return PDiffParts(config or tiny_config(), tmp_path / "run", data=tiny_data(), progress=False, log=None, **kw)


def plant_population(run, k=4):
    """A population of k copies of the base subset, perturbed, saved the way collect saves it."""
    model = run.new_model()
    spec = ParamSpec.from_model(model)
    g = torch.Generator().manual_seed(1)
    flat = spec.flatten([model]).repeat(k, 1) + 0.01 * torch.randn(k, spec.dim, generator=g)
    pop = Population(flat, torch.linspace(50, 60, k), spec, {n: v.clone() for n, v in model.state_dict().items()})
    pop.meta["config"] = run._fields("population")
    pop.save(run.path("population"))
    return pop


def plant_models(run, pop, standardize=True):
    """An autoencoder and a denoiser for `pop`, saved with the records the train step writes."""
    pop_digest = read_digest(run.path("population"))
    torch.manual_seed(4)
    ae = run.build_autoencoder(pop.spec.dim)
    extra = Standardizer.fit(pop.spec, pop.params).state_dict() if standardize else {}
    ae_digest = run._save("autoencoder", {**ae.state_dict(), **extra}, {}, {"population": pop_digest})
    with torch.no_grad():
        latents = ae.eval().encode(pop.params)
    dm = run.build_denoiser(latents[0].numel())
    run._save("diffusion", dm.state_dict(), {"channels": run.denoiser_channels(), "latent_shape": list(latents.shape[1:])},
              {"population": pop_digest, "autoencoder": ae_digest})
    return ae, dm


# --- the device ------------------------------------------------------------------------------

def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


# --- construction ----------------------------------------------------------------------------

def test_the_constructor_sets_up_the_run(tmp_path, monkeypatch):
    joined, warmed = [], []
    monkeypatch.setattr(distributed, "init", lambda device: joined.append(device) or device)
    from pdiff_fast.evaluation import population

    monkeypatch.setattr(population, "warm_allocator", lambda: warmed.append(1))
    logged = []
    cfg = tiny_config()
    run = PDiffParts(cfg, tmp_path / "a" / "run", data="DATA", model="MODEL", log=logged.append, allow_stale=True)
    assert run.config is cfg and joined == [torch.device("cpu")] and run.device == torch.device("cpu")
    assert run.run_dir == tmp_path / "a" / "run" and run.run_dir.is_dir()
    assert run.progress is True and run.allow_stale is True and run.timings == {} and warmed == [1]
    assert run._user_model == "MODEL" and run._data == "DATA"
    run.log("hello")
    assert logged == ["hello"]
    run = PDiffParts(cfg, str(tmp_path / "b"), progress=False, log=None)
    assert run.progress is False and run.allow_stale is False and run._user_model is None and run._data is None
    run.log("silent")  # log=None: nothing, no error
    assert logged == ["hello"]


def test_the_other_ranks_show_no_progress_and_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    logged = []
    run = PDiffParts(tiny_config(), tmp_path / "run", log=logged.append)
    run.log("from rank 1")
    assert run.progress is False and logged == []


def test_a_cuda_run_does_not_warm_the_cpu_allocator(tmp_path, monkeypatch):
    from pdiff_fast.evaluation import population

    warmed = []
    monkeypatch.setattr(population, "warm_allocator", lambda: warmed.append(1))
    monkeypatch.setattr(parts_lib, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(distributed, "init", lambda device: device)
    assert PDiffParts(tiny_config(), tmp_path / "run").device.type == "cuda" and warmed == []


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(parts_lib, "pick_device", lambda name: torch.device("cpu"))
    run = PDiffParts()
    assert run.config == Config().validate() and run.run_dir.resolve() == (tmp_path / "runs" / "default").resolve()
    assert run.progress is True and run.allow_stale is False and run.log is print


def test_prompted_configs_need_the_prompted_class(tmp_path):
    with pytest.raises(ValueError, match=r"^config prompted=true needs pdiff_fast\.prompted\.PromptedPDiff, not "
                                         r"PDiffParts$"):
        PDiffParts(tiny_config(prompted=True, recipe="span"), tmp_path / "run")

    class Prompted(PDiffParts):
        PROMPTED = True

    with pytest.raises(ValueError, match=r"^config prompted=false needs pdiff_fast\.PDiff, not Prompted$"):
        Prompted(tiny_config(), tmp_path / "run")
    assert PDiffParts.PROMPTED is False


def test_an_invalid_config_is_refused_before_anything_is_made(tmp_path):
    with pytest.raises(Exception, match="k"):
        PDiffParts(tiny_config(k=0), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_from_run_dir_reads_the_config_and_applies_overrides(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(tiny_config(seed=9).to_dict()))
    run = PDiffParts.from_run_dir(tmp_path / "run", progress=False, num_samples=7)
    assert run.config.seed == 9 and run.config.num_samples == 7 and run.progress is False
    assert run.run_dir == tmp_path / "run"
    assert PDiffParts.from_run_dir(str(tmp_path / "run")).progress is True


# --- data and models -------------------------------------------------------------------------

def test_data_is_loaded_once_by_the_configs_name(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(data_lib, "load_dataset", lambda name: asked.append(name) or tiny_data())
    run = PDiffParts(tiny_config(dataset="digits"), tmp_path / "run", log=None)
    first = run.data
    assert run.data is first and asked == ["digits"]
    given = tiny_data()
    assert make(tmp_path).data is not given and PDiffParts(tiny_config(), tmp_path / "r2", data=given).data is given


def test_new_model_is_the_seeded_zoo_model_or_a_copy_of_the_users(tmp_path):
    run = make(tmp_path, tiny_config(model_kwargs={"hidden": [8]}))
    torch.manual_seed(3)
    want = build_model("mlp", (6,), 3, hidden=[8])
    torch.manual_seed(123)  # the model's own seed decides, not the state before
    got = run.new_model()
    assert got.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values()))
    user = build_model("mlp", (6,), 3, hidden=(5,))
    run = PDiffParts(tiny_config(), tmp_path / "u", model=user, data=tiny_data(), log=None)
    copy = run.new_model()
    assert copy is not user and all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(),
                                                                       user.state_dict().values()))
    copy[1].weight.data.zero_()
    assert user[1].weight.abs().sum() > 0


def test_population_and_base_model(tmp_path):
    run = make(tmp_path)
    pop = plant_population(run)
    got, digest = run._population()
    assert torch.equal(got.params, pop.params) and digest == read_digest(run.path("population"))
    assert torch.equal(run.population().accuracy, pop.accuracy)
    base = run.base_model()
    assert not base.training and next(base.parameters()).device == run.device
    assert all(torch.equal(v, pop.base_state[k]) for k, v in base.state_dict().items())
    stale = PDiffParts(tiny_config(epochs=3), run.run_dir, data=tiny_data(), log=None)
    with pytest.raises(StaleArtifact, match="population.safetensors was made with epochs=10 but the config says epochs=3"):
        stale.population()


def test_standardizer_follows_the_config(tmp_path):
    run = make(tmp_path)
    pop = plant_population(run)
    std = run.standardizer(pop)
    want = Standardizer.fit(pop.spec, pop.params)
    assert all(torch.equal(a, b) for a, b in zip(std.state_dict().values(), want.state_dict().values()))
    assert make(tmp_path / "n", tiny_config(standardize=False)).standardizer(pop) is None


def test_build_autoencoder_passes_the_configs_preset_and_noise(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(parts_lib, "build_autoencoder", lambda *a: asked.append(a) or "AE")
    run = make(tmp_path, tiny_config(autoencoder="lowrank", input_noise=0.25, latent_noise=0.75))
    assert run.build_autoencoder(300) == "AE" and asked == [("lowrank", 300, 0.25, 0.75)]


def test_subset_dim_and_the_autoencoder_preset(tmp_path):
    run = make(tmp_path)
    assert run.subset_dim() is None and run.autoencoder_preset() == "auto"  # no population yet
    pop = plant_population(run)
    assert run.subset_dim() == pop.spec.dim == 256 and run.autoencoder_preset() == "small"
    assert make(tmp_path, tiny_config(autoencoder="lowrank")).autoencoder_preset() == "lowrank"
    from pdiff_fast.io import save_tensors

    save_tensors(run.path("population"), {"params": torch.zeros(1)}, {"nothing": 1})
    assert run.subset_dim() is None  # a header without the spec
    for bad in ({"names": ["a"]}, {"names": 5, "shapes": None, "dtypes": None}, "spec"):
        save_tensors(run.path("population"), {"params": torch.zeros(1)}, {"spec": bad})
        assert run.subset_dim() is None, bad
    run.path("population").write_bytes(b"not a safetensors file")
    assert run.subset_dim() is None


def test_denoiser_channels(tmp_path):
    run = make(tmp_path)
    assert run.denoiser_channels() == [2, 3, 4, 5]
    run.config.denoiser_channels = (7, 8)
    assert run.denoiser_channels() == [7, 8]
    run.config.denoiser_channels = None
    assert run.denoiser_channels() == [16, 32, 64, 128]
    run.device = torch.device("cuda")
    assert run.denoiser_channels() == [64, 128, 256, 512]


def test_build_denoiser_gives_each_class_its_widths(tmp_path, monkeypatch):
    made = []

    class Net:
        def __init__(self, *args, **kwargs):
            made.append((type(self).__name__, args, kwargs))

    class ODU(Net):
        pass

    class Plain(Net):
        pass

    monkeypatch.setattr(dn_lib, "ODUnet", ODU)
    monkeypatch.setattr(dn_lib, "DENOISERS", {"ODUnet": ODU, "AE_CNN_bottleneck": Plain})
    monkeypatch.setattr(dn_lib, "EMA", lambda net, decay: ("EMA", net, decay))
    run = make(tmp_path, tiny_config(denoiser="ODUnet", shared_timestep=True, ema_decay=0.5))
    out = run.build_denoiser(40)
    assert out[0] == "EMA" and out[2] == 0.5
    assert made == [("ODU", (40, 1), {"shared_timestep": True, "enc_channel_list": [2, 3, 4, 5],
                                      "dec_channel_list": [5, 4, 3, 2]})]
    run = make(tmp_path, tiny_config())
    run.build_denoiser(12, [9, 8])
    assert made[-1] == ("Plain", (12, 1), {"shared_timestep": False, "channel_list": [9, 8]})
    run.config.denoiser = "unet"
    with pytest.raises(ValueError, match=r"^unknown denoiser 'unet'; choose from \['AE_CNN_bottleneck', 'ODUnet'\]$"):
        run.build_denoiser(12)


def test_build_denoiser_for_real(tmp_path):
    run = make(tmp_path, tiny_config(ema_decay=0.25))
    ema = run.build_denoiser(16)
    assert isinstance(ema, dn_lib.EMA) and isinstance(ema.model, dn_lib.AE_CNN_bottleneck) and ema.decay == 0.25
    torch.manual_seed(0)
    want = dn_lib.AE_CNN_bottleneck(16, 1, channel_list=[2, 3, 4, 5])
    assert ema.model.state_dict().keys() == want.state_dict().keys()


def test_scheduler_is_the_configs_sampler(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(parts_lib, "make_scheduler", lambda *a: asked.append(a) or "S")
    assert make(tmp_path, tiny_config(sampler="ddpm", sample_steps=7, eta=0.5)).scheduler() == "S"
    assert asked == [("ddpm", 7, 0.5)]


# --- trained models, loaded back -------------------------------------------------------------

@pytest.mark.parametrize("standardize", [True, False])
def test_load_models_gives_back_what_was_saved(tmp_path, standardize):
    run = make(tmp_path, tiny_config(standardize=standardize))
    pop = plant_population(run)
    ae, dm = plant_models(run, pop, standardize)
    digests = {"other": "kept"}
    got_ae, got_dm, std = run.load_models(digests)
    assert not got_ae.training and not got_dm.training
    for want, got in ((ae, got_ae), (dm, got_dm)):
        assert want.state_dict().keys() == got.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(want.state_dict().values(), got.state_dict().values()))
    assert digests == {"other": "kept", "population": read_digest(run.path("population")),
                       "autoencoder": read_digest(run.path("autoencoder")),
                       "diffusion": read_digest(run.path("diffusion"))}
    if standardize:
        want = Standardizer.fit(pop.spec, pop.params)
        assert all(torch.equal(a, b) for a, b in zip(std.state_dict().values(), want.state_dict().values()))
        assert std.spec == pop.spec
    else:
        assert std is None


def test_load_models_refuses_files_of_another_run(tmp_path):
    run = make(tmp_path)
    pop = plant_population(run)
    plant_models(run, pop)
    pop_digest = read_digest(run.path("population"))
    ae_digest = read_digest(run.path("autoencoder"))
    run._save("diffusion", {"w": torch.zeros(2)}, {"latent_shape": [1, 4]}, {"population": pop_digest,
                                                                           "autoencoder": ae_digest})
    with pytest.raises(ValueError, match=r"diffusion\.safetensors: not a diffusion model of this run \(Error\(s\) in "
                                         r"loading state_dict"):
        run.load_models()
    run._save("diffusion", {"w": torch.zeros(2)}, {}, {"population": pop_digest, "autoencoder": ae_digest})
    with pytest.raises(ValueError, match=r"diffusion\.safetensors: not a diffusion model file \(no latent_shape in its "
                                         r"metadata\)"):
        run.load_models()
    run._save("autoencoder", {"w": torch.zeros(2), **Standardizer.fit(pop.spec, pop.params).state_dict()}, {},
              {"population": pop_digest})
    with pytest.raises(ValueError, match=r"autoencoder\.safetensors: not an autoencoder of this run \(Error\(s\) in "
                                         r"loading state_dict for [A-Za-z_]+:\)$"):
        run.load_models()


def test_load_models_checks_settings_and_inputs(tmp_path):
    run = make(tmp_path)
    pop = plant_population(run)
    plant_models(run, pop)
    with pytest.raises(StaleArtifact, match="autoencoder.safetensors was made with ae_steps=1500 but the config says "
                                            "ae_steps=9"):
        make(tmp_path, tiny_config(ae_steps=9)).load_models()
    with pytest.raises(StaleArtifact, match="diffusion.safetensors was made with diffusion_lr=0.001 but the config says "
                                            "diffusion_lr=0.5"):
        make(tmp_path, tiny_config(diffusion_lr=0.5)).load_models()
    ae_path = run.path("autoencoder")
    ae_bytes = ae_path.read_bytes()
    torch.manual_seed(99)  # another autoencoder: the diffusion file was made from the first
    ae = run.build_autoencoder(pop.spec.dim)
    run._save("autoencoder", {**ae.state_dict(), **Standardizer.fit(pop.spec, pop.params).state_dict()}, {},
              {"population": read_digest(run.path("population"))})
    assert ae_path.read_bytes() != ae_bytes
    with pytest.raises(StaleArtifact, match="diffusion.safetensors is stale: it was made from another "
                                            "autoencoder.safetensors"):
        run.load_models()
    ae_digest = read_digest(run.path("autoencoder"))
    run._save("diffusion", {"w": torch.zeros(1)}, {"latent_shape": [1]}, {"population": "another", "autoencoder": ae_digest})
    with pytest.raises(StaleArtifact, match="diffusion.safetensors is stale: it was made from another "
                                            "population.safetensors"):
        run.load_models()
    plant_population(run, k=5)  # another population: the autoencoder is stale
    with pytest.raises(StaleArtifact, match="autoencoder.safetensors is stale: it was made from another "
                                            "population.safetensors"):
        run.load_models()


def test_denoiser_for_reads_the_shape_and_widths_from_the_metadata(tmp_path, monkeypatch):
    run = make(tmp_path)
    asked = []
    monkeypatch.setattr(run, "build_denoiser", lambda n, channels: asked.append((n, channels)) or "D")
    assert run.denoiser_for({"latent_shape": [4, 3], "channels": [1, 2]}) == "D"
    assert run.denoiser_for({"latent_shape": [5]}) == "D"
    assert asked == [(12, [1, 2]), (5, None)] and type(asked[0][0]) is int


def test_a_real_autoencoder_round_trips_through_load(tmp_path):
    run = make(tmp_path)
    pop = plant_population(run)
    plant_models(run, pop)
    ae, _, digest = run._load_autoencoder(pop, read_digest(run.path("population")))
    torch.manual_seed(4)
    want = build_autoencoder("auto", pop.spec.dim, 0.001, 0.1)
    assert ae.preset == want.preset == "small" and digest == read_digest(run.path("autoencoder"))
    assert all(torch.equal(a, b) for a, b in zip(ae.state_dict().values(), want.state_dict().values()))

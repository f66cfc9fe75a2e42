"""No input gives a traceback: `pdiff-fast` (pdiff_fast.cli.main, in-process) on fuzzed config files
and command-line flags exits 0 or 2, and reports each problem on a line of its own that starts with
`pdiff-fast <command>: error:` (or is argparse's own usage error), naming the file or the flags.

No fuzzed call starts real work: the config files go to `report` on an empty run directory (the
config is read and checked, then report stops with exit 2: no report.json), flags that only `sample`
takes go to `sample` on an empty run directory (exit 2: no trained models), and the steps that would
train (collect, train, tasks zoo / train, study) have their work replaced by a stub that raises
WouldWork (module fixture `no_real_work`), which counts as "the input was accepted".

Every failure the fuzzer found is kept as an @example (before the fixes in pdiff_fast/config.py each gave a
traceback or an unnamed error): a config file that is JSON but not an object (null, 3, "ab", [1, 2]: TypeError
in the CLI's dict.update; [["k", 0]] was even read as {"k": 0}); an integer beyond the float range in a number
field (OverflowError in math.isfinite); an integer of 4300+ digits (json's ValueError, the file not named);
arrays nested 600 deep in model_kwargs (RecursionError in dataclasses.asdict) or 100,000 deep (in json.loads);
a count of 10**400 (OverflowError in the size check of `tasks sample`); a FIFO as the config ("no such config
file"); device names torch.device refuses ("cuda:01", "cuda:²": RuntimeError on a GPU machine).

Example counts are the *_EXAMPLES constants (PDIFF_FAST_FUZZ_SCALE multiplies them); the runs are derandomized,
so CI sees the same inputs each time (PDIFF_FAST_FUZZ_RANDOM=1 draws new ones)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pdiff_fast import cli
from pdiff_fast.config import MAX_DEPTH, SAMPLER_NAMES, Config
from pdiff_fast.tasks.config import TaskConfig

# examples per property (each is a call of main(); a call takes a few milliseconds)
SCALE = int(os.environ.get("PDIFF_FAST_FUZZ_SCALE", "1"))
JSON_EXAMPLES = 250 * SCALE  # arbitrary JSON documents as the config
FIELD_EXAMPLES = 300 * SCALE  # objects of real Config fields with values of every type and edge
TASK_JSON_EXAMPLES = 150 * SCALE  # arbitrary JSON as a `tasks` config
TASK_FIELD_EXAMPLES = 200 * SCALE  # objects of real TaskConfig fields
BYTES_EXAMPLES = 150 * SCALE  # config files that are not UTF-8 text or not JSON
DEEP_EXAMPLES = 40 * SCALE  # deeply nested JSON
PATH_EXAMPLES = 80 * SCALE  # --config names of files that are missing, directories, FIFOs, shipped names
FLAG_EXAMPLES = 300 * SCALE  # pipeline steps' flags with fuzzed values
TASK_FLAG_EXAMPLES = 200 * SCALE  # `tasks` steps' flags
DEVICE_EXAMPLES = 200 * SCALE  # device strings on a machine that pretends to have CUDA

SETTINGS = dict(deadline=None, derandomize=not os.environ.get("PDIFF_FAST_FUZZ_RANDOM"), database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


class WouldWork(Exception):
    """Real work (training, sampling, a study) was about to start: the input was accepted."""


def _stub(what):
    def stub(*args, **kwargs):
        raise WouldWork(what)
    return stub


@pytest.fixture(scope="module", autouse=True)
def no_real_work(tmp_path_factory):
    """The steps that would train or sample raise WouldWork instead, for the whole module."""
    import pdiff_fast.pipeline.pdiff as pipeline_pdiff
    import pdiff_fast.pipeline.study as study
    from pdiff_fast.pipeline.pdiff import PDiff
    from pdiff_fast.tasks.pdiff import TaskPDiff

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PDIFF_FAST_CACHE", str(tmp_path_factory.mktemp("cache")))
        for name in ("collect", "fit", "evaluate", "run"):
            mp.setattr(PDiff, name, _stub(f"PDiff.{name}"))
        mp.setattr(pipeline_pdiff, "generate", _stub("sampling"))  # `sample` must stop before it
        for name in ("zoo", "train", "evaluate", "generate", "run"):
            mp.setattr(TaskPDiff, name, _stub(f"TaskPDiff.{name}"))
        mp.setattr(study, "run_study", _stub("run_study"))
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def scratch(base: Path):
    """A fresh directory for one example, removed after it."""
    d = Path(tempfile.mkdtemp(dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclasses.dataclass
class Outcome:
    code: int | None  # main()'s return code, or SystemExit's
    usage_error: bool  # argparse refused the command line
    work: str | None  # the step whose real work was about to start
    err: str
    out: str


def run_cli(argv: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    usage_error, work = False, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code, usage_error = exc.code, True
        except WouldWork as exc:
            code, work = None, str(exc)
    return Outcome(code, usage_error, work, err.getvalue(), out.getvalue())


USAGE = re.compile(r"^pdiff-fast( [a-z]+)+: error: ")


def check(o: Outcome, command: str, may_work: bool = False) -> list[str]:
    """The CLI's contract; returns the text after `pdiff-fast <command>: error: ` of each error line."""
    assert "Traceback" not in o.err and "Traceback" not in o.out, o.err
    if o.work is not None:
        assert may_work, f"real work started: {o.work}"
        return []
    if o.usage_error:
        assert o.code == 2, (o.code, o.err)
        assert USAGE.match(o.err.strip().splitlines()[-1]), o.err
        return []
    assert o.code in (0, 2), (o.code, o.err)
    lines = o.err.splitlines()
    if o.code == 0:
        return []
    prefix = f"pdiff-fast {command}: error: "
    assert lines, "exit 2 without a message"
    assert all(line.startswith(prefix) for line in lines), o.err
    return [line[len(prefix):] for line in lines]


# --- JSON documents ----------------------------------------------------------------------
class Raw(str):
    """JSON text written as it is: numbers json.dumps cannot write."""


HUGE = [Raw("1" + "0" * 400), Raw("-" + "9" * 400), Raw("9" * 5000), Raw("1e400"), Raw("-1e400"), Raw("1E-400"),
        Raw("-0"), Raw("0.0e0"), 2**53 + 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**308, 2**1024]


def to_json(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, list):
        return "[" + ",".join(to_json(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + to_json(x) for k, x in v.items()) + "}"
    return json.dumps(v)  # nan and inf as NaN and Infinity, which Python's json reads back


CONFIG_FIELDS = [f.name for f in dataclasses.fields(Config)]
TASK_FIELDS = [f.name for f in dataclasses.fields(TaskConfig)]
WORDS = sorted({*CONFIG_FIELDS, *TASK_FIELDS, *SAMPLER_NAMES, "auto", "cpu", "cuda", "cuda:0", "cuda:01", "cuda:²",
                "v1", "v2", "small", "medium", "lowrank", "AE_CNN_bottleneck", "ODUnet", "blocks", "time", "mnist1d",
                "digits", "cnn1d", "mlp", "all", "last-2-norm-layers", "", " ", "\x00", "\ud800", "\n"})
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(HUGE) | st.text(max_size=20)
           | st.sampled_from(WORDS))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10) | st.sampled_from(WORDS), inner, max_size=5),
                           max_leaves=20)
# values for a real field: the defaults of either config, widths around the denoisers' needs, bounds
EDGES = [None, True, False, 0, 1, -1, 2, 3, 4, 5, 44, 45, 1000, 1001, 0.0, -0.0, 0.5, 1.0, 1e-9, 1.5, 1e308,
         math.inf, -math.inf, math.nan, "", "1", "3", "0.001", "yes", [], [0], [1], [4, 8], [4, 8, 16],
         [4, 8, 16, 32], [4, 8, 16, 32, 64], [16, 32, 64, 128], [1.5], [True], ["a"], [-1], [math.nan], {}, {"a": 1},
         *HUGE, *SAMPLER_NAMES, "AE_CNN_bottleneck", "ODUnet", "auto", "cpu", "cuda", "cuda:0", "cuda:01"]
DEFAULTS = [v for cfg in (Config(), TaskConfig()) for v in cfg.to_dict().values()]
field_values = st.sampled_from(EDGES) | st.sampled_from(DEFAULTS) | json_values


def field_docs(names):
    return st.dictionaries(st.sampled_from(names), field_values, max_size=6)


def run_config(base, text: bytes, command: list[str], in_run_dir: bool, flags=()) -> tuple[Outcome, list, Path]:
    """`command` with the config `text` given by --config, or as the run directory's config.json."""
    with scratch(base) as d:
        run_dir = d / "run"
        if in_run_dir:
            run_dir.mkdir()
            path = run_dir / "config.json"
            argv = [*command, "--run-dir", str(run_dir), *flags]
        else:
            path = d / "c.json"
            argv = [*command, "--run-dir", str(run_dir), "--config", str(path), *flags]
        path.write_bytes(text)
        o = run_cli(argv)
    return o, check(o, command[0]), path


def json_type(doc) -> str:
    if doc is None or isinstance(doc, bool):
        return json.dumps(doc)
    return {str: "a string", list: "an array", int: "a number", float: "a number"}[type(doc)]


def assert_names_file(problems: list[str], path: Path):
    """Each problem is the config file's (named first) or the missing report's (the step itself)."""
    for p in problems:
        assert p.startswith(f"{path}: ") or "report.json" in p, p


@settings(max_examples=JSON_EXAMPLES, **SETTINGS)
@given(doc=json_values, in_run_dir=st.booleans())
@example(doc=None, in_run_dir=False)
@example(doc=[1, 2], in_run_dir=True)
@example(doc=[["k", 0]], in_run_dir=False)
@example(doc="ab", in_run_dir=False)
@example(doc={"lr": Raw("1" + "0" * 400)}, in_run_dir=False)
@example(doc={"noise_sigmas": [Raw("1" + "0" * 400)]}, in_run_dir=True)
@example(doc={"k": Raw("9" * 5000)}, in_run_dir=False)
def test_any_json_as_the_config(base, doc, in_run_dir):
    text = to_json(doc)
    o, problems, path = run_config(base, text.encode(), ["report"], in_run_dir)
    assert o.code == 2  # a config the checks pass still has no report to show
    assert_names_file(problems, path)
    if not isinstance(doc, (dict, Raw)) and "9" * 5000 not in text:  # (json refuses integers of 4300+ digits)
        [problem] = problems  # (the CLI may add advice on the run directory's config.json)
        assert problem.startswith(f"{path}: a config must be a JSON object of fields, not {json_type(doc)}")



@settings(max_examples=FIELD_EXAMPLES, **SETTINGS)
@given(doc=field_docs(CONFIG_FIELDS), in_run_dir=st.booleans())
@example(doc={"lr": Raw("1" + "0" * 400)}, in_run_dir=False)
@example(doc={"eta": Raw("-" + "9" * 400)}, in_run_dir=True)
@example(doc={"model_kwargs": {"a": Raw("[" * 600 + "]" * 600)}}, in_run_dir=False)
@example(doc={"denoiser_channels": [4, 8]}, in_run_dir=False)
@example(doc={"denoiser": "ODUnet", "denoiser_channels": [4, 8]}, in_run_dir=False)
def test_config_fields_of_every_type(base, doc, in_run_dir):
    o, problems, path = run_config(base, to_json(doc).encode(), ["report"], in_run_dir)
    assert o.code == 2
    assert_names_file(problems, path)


@settings(max_examples=FIELD_EXAMPLES // 2, **SETTINGS)
@given(doc=field_docs(CONFIG_FIELDS), flags=st.lists(st.sampled_from(["--seed", "--num-samples", "--sample-steps",
                                                                      "--eta", "--device"]).flatmap(
    lambda f: PIPELINE_FLAGS[f][0].map(lambda v: f"{f}={v}")), max_size=2))
@example(doc={"num_samples": Raw("1" + "0" * 400)}, flags=[])
def test_config_fields_and_flags_on_sample(base, doc, flags):
    """`sample` does more before it stops (the size of what it would make is checked against the machine)."""
    o, problems, path = run_config(base, to_json(doc).encode(), ["sample"], False, flags)
    assert o.code == 2


@settings(max_examples=TASK_JSON_EXAMPLES, **SETTINGS)
@given(doc=json_values, in_run_dir=st.booleans())
@example(doc=None, in_run_dir=False)
@example(doc=[1, 2], in_run_dir=True)
@example(doc={"guidance": Raw("1" + "0" * 400)}, in_run_dir=False)
def test_any_json_as_the_tasks_config(base, doc, in_run_dir):
    o, problems, path = run_config(base, to_json(doc).encode(), ["tasks", "report"], in_run_dir)
    assert o.code == 2
    assert_names_file(problems, path)


@settings(max_examples=TASK_FIELD_EXAMPLES, **SETTINGS)
@given(doc=field_docs(TASK_FIELDS), in_run_dir=st.booleans())
@example(doc={"encoder_width": True}, in_run_dir=False)
@example(doc={"denoiser_channels": [4, 8, 16]}, in_run_dir=False)
@example(doc={"zoo_lr": Raw("1" + "0" * 400)}, in_run_dir=True)
def test_tasks_config_fields_of_every_type(base, doc, in_run_dir):
    o, problems, path = run_config(base, to_json(doc).encode(), ["tasks", "report"], in_run_dir)
    assert o.code == 2
    assert_names_file(problems, path)
    assert len(problems) == len(set(problems))
    assert len([p for p in problems if p.startswith(f"{path}: field 'encoder_width'")]) <= 1  # one line per field


@settings(max_examples=TASK_FIELD_EXAMPLES // 2, **SETTINGS)
@given(doc=field_docs(TASK_FIELDS), flags=st.lists(st.sampled_from(["--seed", "--samples-per-task", "--guidance",
                                                                    "--eta", "--device"]).flatmap(
    lambda f: TASK_FLAGS[f][0].map(lambda v: f"{f}={v}")), max_size=2))
@example(doc={"samples_per_task": Raw("1" + "0" * 400)}, flags=[])  # OverflowError in the size check
@example(doc={}, flags=["--samples-per-task=1" + "0" * 400])
def test_tasks_config_fields_and_flags_on_sample(base, doc, flags):
    o, problems, path = run_config(base, to_json(doc).encode(), ["tasks", "sample"], False, flags)
    assert o.code == 2


# --- bytes that are not a JSON config ------------------------------------------------------------------------
def encodings(doc):
    text = to_json(doc)
    return st.sampled_from([text.encode("utf-16"), text.encode("utf-32"), b"\xef\xbb\xbf" + text.encode(),
                            text.encode()[:-1], text.encode() + b"\x00", text.encode() + b"}"])


not_json = (st.binary(max_size=60) | st.text(max_size=40).map(str.encode)
            | json_values.flatmap(encodings)
            | st.sampled_from([b"", b" ", b"\xff\xfe", b'{"k": "\xff"}', b"{'k': 3}", b'{"k": 3,}', b'{"k": 3} {}',
                               b'{"k": 3}\x00', b"NaN", b"-Infinity", b'{"k": 3, "k": "x"}', b"\xed\xa0\x80"]))


@settings(max_examples=BYTES_EXAMPLES, **SETTINGS)
@given(text=not_json, in_run_dir=st.booleans(), tasks=st.booleans())
@example(text=b"null", in_run_dir=False, tasks=False)
@example(text=b"[" * 100000, in_run_dir=False, tasks=False)
@example(text=b"[" * 100000, in_run_dir=False, tasks=True)
@example(text=b'{"k": 1' + b"0" * 5000 + b"}", in_run_dir=False, tasks=False)
def test_files_that_are_not_json_configs(base, text, in_run_dir, tasks):
    o, problems, path = run_config(base, text, ["tasks", "report"] if tasks else ["report"], in_run_dir)
    assert o.code == 2
    assert_names_file(problems, path)


# --- nesting ------------------------------------------------------------------------------------------------
def nested(depth: int, kind: str, closed: bool) -> bytes:
    """`depth` levels of arrays, of objects, or of arrays in a real field (model_kwargs: {"a": ...})."""
    if kind == "array":
        return ("[" * depth + ("]" * depth if closed else "")).encode()
    if kind == "object":
        return ('{"a":' * depth + "0" + ("}" * depth if closed else "")).encode()
    return ('{"model_kwargs": {"a": ' + "[" * depth + ("]" * depth + "}}" if closed else "")).encode()


def document_depth(depth: int, kind: str) -> int:
    return depth + 2 if kind == "field" else depth


@settings(max_examples=DEEP_EXAMPLES, **SETTINGS)
@given(depth=st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 500, 600, 999, 1000, 5000,
                              100000]) | st.integers(1, 3000),
       kind=st.sampled_from(["array", "object", "field"]), closed=st.booleans(), tasks=st.booleans())
@example(depth=100000, kind="array", closed=False, tasks=False)
@example(depth=100000, kind="array", closed=False, tasks=True)
@example(depth=600, kind="field", closed=True, tasks=False)
@example(depth=600, kind="field", closed=True, tasks=True)
def test_deeply_nested_json(base, depth, kind, closed, tasks):
    o, problems, path = run_config(base, nested(depth, kind, closed), ["tasks", "report"] if tasks else ["report"],
                                   in_run_dir=False)
    assert o.code == 2
    assert_names_file(problems, path)
    too_deep = f"{path}: config is nested too deeply (JSON arrays and objects more than {MAX_DEPTH} levels deep)"
    if closed and document_depth(depth, kind) > MAX_DEPTH:
        assert problems == [too_deep]
    elif not closed:
        [problem] = problems
        assert problem == too_deep or problem.startswith(f"{path}: config is not valid JSON (")


# --- what --config names ------------------------------------------------------------------------------------
@settings(max_examples=PATH_EXAMPLES, **SETTINGS)
@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("./"), max_size=30)
       | st.sampled_from(["quick", "tasks-quick", ".", "..", "dir", "fifo", "link", "dangling", "dir/", "fifo/x",
                          "a" * 300, "a/" * 3000, "/dev/null", "/proc/self/status"]),
       tasks=st.booleans())
@example(name="fifo", tasks=False)
@example(name="fifo", tasks=True)
@example(name="/dev/null", tasks=False)
@example(name="a" * 300, tasks=False)
def test_what_config_names(base, name, tasks):
    """Missing files, directories, a FIFO (reading it would block forever), devices, over-long names
    and the shipped configs' names, relative to a working directory that holds some of each."""
    with scratch(base) as d, pytest.MonkeyPatch.context() as mp:
        (d / "dir").mkdir()
        os.mkfifo(d / "fifo")
        (d / "link").symlink_to(d / "fifo")
        (d / "dangling").symlink_to(d / "nowhere")
        mp.chdir(d)
        command = ["tasks", "report"] if tasks else ["report"]
        o = run_cli([*command, "--run-dir", str(d / "run"), "--config", name])
    problems = check(o, command[0])
    assert o.code == 2
    if name in ("fifo", "link", "/dev/null"):
        assert problems == [f"{name}: is not a regular file (a FIFO, socket or device), not a JSON config file"]


# --- flags --------------------------------------------------------------------------------------------------
def as_text(values):
    return st.sampled_from(values) | st.integers().map(str) | st.floats().map(str) | st.text(max_size=12)


INTS = ["0", "1", "-1", "1000", "1001", "2", "9" * 5000, "1" + "0" * 400, "1_000", " 7 ", "٣", "0x10", "1e3", "1.0",
        "", "+5",
        str(2**63 - 1), str(2**63), str(2**62 + 1), "nan"]
FLOATS = ["nan", "NaN", "inf", "-inf", "1e400", "-0", "0", "1", "-1", "1e-400", "1_0.5", "٣", "0x1p3", "", "4.0"]
DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:01", "cuda:²", "cuda:٣", "cuda:" + "9" * 5000, "tpu",
           "", "CPU", "cuda:-1"]
PIPELINE_FLAGS = {  # flag: (its values, the step that takes it without starting work)
    "--seed": (as_text(INTS), "report"), "--device": (as_text(DEVICES), "report"),
    "--k": (as_text(INTS), "collect"), "-k": (as_text(INTS), "collect"), "--epochs": (as_text(INTS), "collect"),
    "--trajectories": (as_text(INTS), "collect"), "--recipe": (as_text(["v1", "v2", "v3"]), "collect"),
    "--dataset": (as_text(["mnist1d", "digits", "cifar"]), "collect"),
    "--model": (as_text(["cnn1d", "resnet", "vit", "mlp"]), "collect"),
    "--subset": (as_text(["all", "last-2-norm-layers", "", "*", "[", "x"]), "collect"),
    "--autoencoder": (as_text(["auto", "small", "medium", "lowrank"]), "train"),
    "--ae-steps": (as_text(INTS), "train"), "--diffusion-steps": (as_text(INTS), "train"),
    "--num-samples": (as_text(INTS), "sample"), "--sample-steps": (as_text(INTS), "sample"),
    "--eta": (as_text(FLOATS), "sample"), "--sampler": (as_text([*SAMPLER_NAMES, "euler"]), "sample"),
    "--prompt-accuracy": (as_text(FLOATS), "sample"), "--guidance": (as_text(FLOATS), "sample"),
}
TASK_FLAGS = {
    "--seed": (as_text(INTS), "report"), "--device": (as_text(DEVICES), "report"),
    "--zoo-runs": (as_text(INTS), "zoo"), "--zoo-steps": (as_text(INTS), "zoo"),
    "--ae-steps": (as_text(INTS), "train"), "--diffusion-steps": (as_text(INTS), "train"),
    "--samples-per-task": (as_text(INTS), "sample"), "--guidance": (as_text(FLOATS), "sample"),
    "--sampler": (as_text([*SAMPLER_NAMES, "euler"]), "sample"), "--sample-steps": (as_text(INTS), "sample"),
    "--eta": (as_text(FLOATS), "sample"), "--task": (as_text(["3-8", "0-1", "3-3", "x", "10-1"]), "sample"),
}
STUDY_FLAGS = {f: (as_text(INTS), "study") for f in ("--ae-steps", "--diffusion-steps", "--num-samples", "--seed",
                                                     "--jobs", "--finetune-models")}
STUDY_FLAGS.update({"--device": (as_text(DEVICES), "study"),
                    "--only": (as_text(["ablation", "sampler", "finetune", "x"]), "study"),
                    "--variant": (as_text(["default", "x"]), "study")})
# steps whose work a stub replaces: the fuzzer may reach it with a valid command line
MAY_WORK = {"collect", "train", "zoo", "study"}


def flag_sets(table, steps_of):
    """A step and 1..3 of its flags with fuzzed values; the step is the one that takes the first flag."""
    def build(flag):
        values, step = table[flag]
        others = [f for f, (_, s) in table.items() if f != flag and s in steps_of[step]]
        pairs = st.lists(st.sampled_from(others).flatmap(lambda f: table[f][0].map(lambda v: (f, v))), max_size=2)
        return st.tuples(st.just(step), values.map(lambda v: (flag, v)), pairs, st.booleans())
    return st.sampled_from(sorted(table)).flatmap(build)


PIPELINE_STEPS_OF = {"report": {"report"}, "collect": {"collect", "report"}, "train": {"train", "report"},
                     "sample": {"sample", "report"}}
TASK_STEPS_OF = {"report": {"report"}, "zoo": {"zoo", "report"}, "train": {"train", "report"},
                 "sample": {"sample", "report"}}


def flag_argv(first, others, joined):
    argv = []
    for flag, value in [first, *others]:
        argv += [f"{flag}={value}"] if joined else [flag, value]
    return argv


def run_flags(base, command, first, others, joined) -> list[str]:
    """The CLI's contract only: a flag's problem may be the config check's ("command-line flags: field
    ...") or any later one's (an unknown task, a request larger than the machine, a missing artifact)."""
    with scratch(base) as d:
        o = run_cli([*command, "--run-dir", str(d / "run"), *flag_argv(first, others, joined)])
    problems = check(o, command[0], may_work=command[-1] in MAY_WORK)
    assert all(problems), o.err
    return problems


@settings(max_examples=FLAG_EXAMPLES, **SETTINGS)
@given(case=flag_sets(PIPELINE_FLAGS, PIPELINE_STEPS_OF))
@example(case=("report", ("--device", "cuda:²"), [], True))
@example(case=("report", ("--seed", "9" * 5000), [], True))
@example(case=("sample", ("--eta", "1e400"), [], True))
@example(case=("collect", ("--k", "0"), [("--epochs", "٣")], True))
@example(case=("sample", ("--num-samples", "1" + "0" * 400), [], True))
def test_pipeline_flags(base, case):
    step, first, others, joined = case
    run_flags(base, [step], first, others, joined)


@settings(max_examples=TASK_FLAG_EXAMPLES, **SETTINGS)
@given(case=flag_sets(TASK_FLAGS, TASK_STEPS_OF))
@example(case=("sample", ("--guidance", "inf"), [], True))
@example(case=("zoo", ("--zoo-runs", "0"), [], False))
@example(case=("sample", ("--task", "0"), [], False))
@example(case=("sample", ("--samples-per-task", str(2**63 - 1)), [], False))
def test_tasks_flags(base, case):
    step, first, others, joined = case
    run_flags(base, ["tasks", step], first, others, joined)


@settings(max_examples=TASK_FLAG_EXAMPLES // 2, **SETTINGS)
@given(case=flag_sets(STUDY_FLAGS, {"study": {"study"}}))
@example(case=("study", ("--jobs", "0"), [], True))
def test_study_flags(base, case):
    step, first, others, joined = case
    run_flags(base, ["study"], first, others, joined)


# --- device names on a CUDA machine -----------------------------------------------------------------------------
@settings(max_examples=DEVICE_EXAMPLES, **SETTINGS)
@given(name=st.sampled_from(DEVICES) | st.text(max_size=8).map(lambda s: "cuda:" + s) | st.text(max_size=8))
@example(name="cuda:01")
@example(name="cuda:²")
@example(name="cuda:٣")
@example(name="cuda:" + "9" * 5000)
def test_a_device_the_config_accepts_is_one_torch_accepts(name):
    """With CUDA (two devices) the config's device check passes only names torch.device takes, so a
    GPU machine never gets past the config with a device string torch refuses later (RuntimeError)."""
    import torch

    from pdiff_fast.config import ConfigError
    from pdiff_fast.pipeline.parts import pick_device

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: 2)
        try:
            Config.from_dict({"device": name})
        except ConfigError as exc:
            [problem] = exc.problems
            assert problem.startswith("config: field 'device': ")
            return
    assert pick_device(name).type in ("cuda", "cpu")


# --- the fuzzed steps stop before any work ---------------------------------------------------------------------
def test_the_fuzzed_steps_stop_before_any_work(base):
    """A valid config on `report` and `sample` (pipeline and tasks) in an empty run directory exits 2
    at once, with the missing artifact named, and trains nothing: no file in the run directory (a lock
    file or other dot file aside)."""
    for command, missing in ((["report"], "report.json"), (["sample"], "population.safetensors"),
                             (["tasks", "report"], "report.json"), (["tasks", "sample"], "zoo.safetensors")):
        with scratch(base) as d:
            path = d / "c.json"
            path.write_text(json.dumps({"seed": 3}))
            start = time.perf_counter()
            o = run_cli([*command, "--run-dir", str(d / "run"), "--config", str(path), "--seed", "4"])
            took = time.perf_counter() - start
            [problem] = check(o, command[0])
            assert missing in problem and o.code == 2 and took < 2
            assert [f.name for f in (d / "run").iterdir() if not f.name.startswith(".")] == []

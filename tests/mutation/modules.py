"""What the mutation run mutates, with which tests, and which surviving mutants are equivalent.

MODULES: a pipeline module and the tests that cover it (mutmut runs, per mutant, the tests of
this list that reach the mutated function).

EQUIVALENT: survivors that no test can kill, as (module, pattern, reason). `pattern` is a
regular expression matched against the mutant's changed lines (`-old` and `+new` joined by
" => "); one rule covers every mutant of one kind, and the report lists each mutant it matched,
so a rule that starts to swallow a real bug shows in the list.
"""
from __future__ import annotations

import re

MODULES: dict[str, list[str]] = {
    "pdiff_fast/evaluation/novelty.py": [
        "tests/evaluation/test_novelty.py", "tests/evaluation/test_novelty_parts.py",
        "tests/evaluation/test_verdict_boundaries.py"],
    "pdiff_fast/data.py": ["tests/test_data.py"],
    "pdiff_fast/io.py": ["tests/test_io.py", "tests/test_atomic_writes.py"],
    "pdiff_fast/evaluation/population_plan.py": [
        "tests/evaluation/test_population.py", "tests/evaluation/test_population_plan.py"],
    "pdiff_fast/config.py": ["tests/test_config.py", "tests/pipeline/test_stale_fields.py"],
    "pdiff_fast/evaluation/population.py": [
        "tests/evaluation/test_population.py", "tests/evaluation/test_population_plan.py"],
    "pdiff_fast/pipeline/run_dir.py": ["tests/pipeline/test_run_dir_parts.py", "tests/pipeline/test_run_dir.py",
                                      "tests/pipeline/test_stale_fields.py"],
}

# Reasons shared by several modules.
ONE_DEVICE = ("a device move dropped (`.to(None)`, `device=None`): the mutation run has one device, so "
              "the tensor is already where it is moved to; the GPU tests catch a missing move")
BLOCKING = ("a block or chunk size changed: results do not depend on the blocking (the tests compare "
            "blocked and unblocked results), only the memory held at once does")



def edit(old: str, new: str) -> tuple[str, str]:
    """The changed tokens of a one-line mutant: ('x.device', 'None') for `.to(x.device)` -> `.to(None)`."""
    a, b = re.findall(r"\w+|\S", old), re.findall(r"\w+|\S", new)
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[len(a) - 1 - end] == b[len(b) - 1 - end]:
        end += 1
    return "".join(a[start:len(a) - end]), "".join(b[start:len(b) - end])


def drops_a_device_move(old: str, new: str) -> bool:
    """A device argument or target replaced by None or removed (never a dtype)."""
    was, now = edit(old, new)
    return now in ("", "None") and "device" in was and "dtype" not in was


def drops_a_cast_to_the_activations_dtype(old: str, new: str) -> bool:
    was, now = edit(old, new)
    return now == "None" and was in ("like.dtype", "h.dtype")


EQUIVALENT: list = [
    ("*", drops_a_device_move, ONE_DEVICE),
    ("pdiff_fast/io.py", r"=> mask = os\.umask\(1\)$",
     "os.umask returns the mask it replaces whatever it sets, and the next line puts that mask back"),
    ("pdiff_fast/io.py", r'(decode|encoding=)\(?"UTF-8"', "codec names are case-insensitive: UTF-8 is utf-8"),
    ("pdiff_fast/io.py", r'=> with open\(tmp, "w", (encoding=None|)\s*\) as f:$',
     "json.dump escapes every non-ASCII character (ensure_ascii), so the JSON text is the same bytes in any "
     "encoding"),
    ("pdiff_fast/data.py", r"DataLoader\(source, (batch_size=1025, shuffle=False|batch_size=1024, shuffle=None|shuffle=False|batch_size=1024, )\)\)$",
     "the DataLoader's batch size (1024, 1025 or its default 1) only blocks the rows, and shuffle=None or "
     "left out is shuffle=False"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> if _is_plain_sequential\(None\):$",
     "for a plain nn.Sequential the forward hooks give the same chain as expanding it directly"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> return _expand\(None, model\)$|=> pre = f\"\{n\}\.\" if \(n\) or True|=> pre = f\"\{n\}\.\" if n else \"XXXX\"",
     "chain stage names are never empty (children's names), and None is as false as the empty root name"),
    ("pdiff_fast/evaluation/population_plan.py", r'=> whole = _Stage\((None|"XXXX"),',
     "a stage's name is kept for reading a plan; nothing computes with it, and the whole-model stage holds "
     "the full names"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> sizes = \[probe\[1\]\.numel\(\)\]$",
     "every probe sample has the same shape"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> out\.append\(default\.detach\(\)\.reshape\(-1\)",
     "expand(m, -1) of a (C,) vector is the same (m, C) view as of a (1, C) one"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> y = norm_affine_act\(x, w, b, None, None, 1\.0, name, slope\)$",
     "without running statistics the op does not read eps (the layer norm is applied before it)"),
    ("pdiff_fast/evaluation/population_plan.py", drops_a_cast_to_the_activations_dtype,
     "a norm's parameters and statistics cast to the dtype of its input, which is theirs: a model whose "
     "norm layer differs in dtype from its input does not run in PyTorch either (the float64 case runs)"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> batched = None$", "None is as false as False where batched is read"),
    ("pdiff_fast/evaluation/population_plan.py", r'=> warnings\.filterwarnings\("ignore", \)$',
     "ignoring every warning inside the vmap call instead of the batching-rule one: nothing else warns there "
     "(the vmap test runs with warnings as errors)"),
    ("pdiff_fast/evaluation/novelty.py", r"=> index = torch\.full\(\(n,\), -1, (dtype=None)?\s*\)$",
     "torch.full with an integer fill value is int64 already, the dtype the line names"),
    ("pdiff_fast/evaluation/novelty.py", r"rows = max\(|=> for r0 in range\(0, n, \):", BLOCKING),
    ("pdiff_fast/evaluation/novelty.py", r"=> sq = \(xb \* xb\)\.sum\(None, keepdim=True\)",
     "a row's own squared norm is added to every candidate of that row (summing the whole block adds one "
     "constant to all): the argmin does not change, and the distance is then recomputed exactly"),
    ("pdiff_fast/evaluation/novelty.py", r"(softmax|argmax)\(\+1\)",
     "dim 1 of a (batch, classes) output is its last dim, -1"),
    ("pdiff_fast/evaluation/novelty.py", r"if \(math\.isfinite\(tau\)\) or True else",
     "with tau NaN, distance > tau is all False: the zeros the other branch gives"),
    ("pdiff_fast/evaluation/novelty.py", r"if \(accuracy\.numel\(\)\) or True else",
     "the mean over no models is NaN, what the other branch gives"),
    ("pdiff_fast/evaluation/novelty.py", r'=> return "above" if a >= b else',
     "a == b is level (the band test above returns first), so >= and > never differ here"),
    ("pdiff_fast/evaluation/novelty.py", r"batch_size: int = 102[45]\)", BLOCKING),
]

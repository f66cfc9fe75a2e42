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
    "pdiff_fast/io.py": ["tests/test_io.py", "tests/test_atomic_writes.py", "tests/test_io_integrity.py"],
    "pdiff_fast/evaluation/population_plan.py": [
        "tests/evaluation/test_population.py", "tests/evaluation/test_population_plan.py"],
    "pdiff_fast/config.py": ["tests/test_config.py", "tests/test_config_checks.py", "tests/pipeline/test_stale_fields.py"],
    "pdiff_fast/evaluation/population.py": [
        "tests/evaluation/test_population.py", "tests/evaluation/test_population_parts.py",
        "tests/evaluation/test_population_plan.py"],
    # the unit tests only: test_run_dir.py's real runs (kill -9, torchrun, resumes) take minutes per mutant
    "pdiff_fast/pipeline/run_dir.py": ["tests/pipeline/test_run_dir_parts.py", "tests/pipeline/test_stale_fields.py"],
    "pdiff_fast/pipeline/lock.py": ["tests/pipeline/test_lock.py"],
    "pdiff_fast/pipeline/capacity.py": ["tests/pipeline/test_capacity.py"],
    # not tests/test_distributed.py: two spawned processes per test (seconds to minutes per mutant);
    # the sharded path is tested with the process group faked (test_judge_parts.py)
    "pdiff_fast/evaluation/judge.py": [
        "tests/evaluation/test_evaluate.py", "tests/evaluation/test_novelty.py",
        "tests/evaluation/test_judge_parts.py"],
    # test_diffusion.py's tests of the scheduler alone: its two sampling tests run generate() over
    # whole models (pdiff_fast/diffusion/sample.py), seconds each, and test_sample.py is sample.py's
    "pdiff_fast/diffusion/schedulers.py": [
        *(f"tests/diffusion/test_diffusion.py::{t}" for t in (
            "test_buffers_match_the_reference", "test_full_ddpm_loop_matches_the_reference_loop",
            "test_no_noise_at_t0_and_clamped", "test_add_noise_is_q_sample",
            "test_ddim_eta0_is_deterministic_and_recovers_x0_from_the_true_noise", "test_bad_scheduler_arguments")),
        "tests/diffusion/test_schedulers_parts.py", "tests/diffusion/test_few_step.py"],
    "pdiff_fast/params.py": ["tests/test_params.py", "tests/test_params_parts.py"],
    "pdiff_fast/evaluation/bitsets.py": ["tests/evaluation/test_bitsets_parts.py", "tests/evaluation/test_population.py"],
    "pdiff_fast/diffusion/few_step.py": ["tests/diffusion/test_few_step.py", "tests/diffusion/test_few_step_parts.py"],
    "pdiff_fast/diffusion/samplers.py": ["tests/diffusion/test_samplers_parts.py", "tests/diffusion/test_few_step.py"],
    # not test_from_diffusers.py: it runs the adapter through generate() (sample.py), whole models per mutant
    "pdiff_fast/diffusion/from_diffusers.py": ["tests/diffusion/test_from_diffusers_parts.py"],
    # test_autoencoder_choice.py's unit tests only: its fits (150 steps per case), its 200k/300k-value
    # round trips and its end-to-end runs take seconds to minutes per mutant
    "pdiff_fast/nn/autoencoder_choice.py": [
        "tests/nn/test_autoencoder_choice_parts.py",
        *(f"tests/nn/test_autoencoder_choice.py::{t}" for t in (
            "test_auto_picks_small_between_its_shortest_input_and_the_threshold",
            "test_short_subsets_are_zero_padded_and_cut_back", "test_the_reference_modules_still_refuse_short_inputs"))],
    "pdiff_fast/nn/lowrank_autoencoder.py": [
        "tests/nn/test_lowrank_autoencoder.py", "tests/nn/test_lowrank_autoencoder_parts.py"],
    # test_conditional.py's set-encoder tests only (the rest trains conditioned denoisers)
    "pdiff_fast/nn/set_encoder.py": [
        "tests/nn/test_set_encoder_parts.py",
        *(f"tests/tasks/test_conditional.py::{t}" for t in (
            "test_set_encoder_is_permutation_invariant", "test_set_encoder_mask_ignores_padding",
            "test_set_encoder_sees_the_set", "test_set_encoder_bad_input"))],
    # the loop's collaborators (generate, evaluate, the run) faked: test_study.py runs whole studies
    "pdiff_fast/pipeline/study_samplers.py": ["tests/pipeline/test_study_samplers_parts.py"],
    # the run around the step faked: test_pipeline.py and test_train.py train real models end to end
    "pdiff_fast/pipeline/fit.py": ["tests/pipeline/test_fit_parts.py"],
    "pdiff_fast/evaluation/finetuning.py": [
        "tests/evaluation/test_finetuning_parts.py", "tests/evaluation/test_finetune.py"],
    # test_sample.py's fast tests only: its DDPM chunking case (1000 steps, many runs), its Triton-interpreter
    # runs and its launch counter take seconds to tens of seconds per mutant
    "pdiff_fast/diffusion/sample.py": [
        "tests/diffusion/test_sample_parts.py",
        *(f"tests/diffusion/test_sample.py::{t}" for t in (
            "test_seeds_give_different_models_and_the_same_seed_the_same", "test_model_streams_are_independent_and_normal",
            "test_cuda_plan_samples_all_models_in_one_chunk_and_decodes_in_grains_of_its_own",
            "test_cpu_plan_is_the_one_budget_of_before",
            "test_a_decoder_grain_of_its_own_keeps_results_independent_of_the_chunk",
            "test_cuda_graph_auto_is_on_for_the_triton_ddpm_step_on_cuda_only"))],
    "pdiff_fast/nn/models.py": ["tests/nn/test_models.py", "tests/nn/test_models_parts.py"],
    "pdiff_fast/nn/denoiser.py": ["tests/nn/test_denoiser.py", "tests/nn/test_denoiser_parts.py"],
    "pdiff_fast/nn/autoencoder.py": ["tests/nn/test_autoencoder.py", "tests/nn/test_autoencoder_parts.py"],
    # the loops' parts with tiny models: test_train.py trains real models, resumes and all (seconds per test)
    "pdiff_fast/pipeline/train.py": ["tests/pipeline/test_train_parts.py"],
    # not test_novelty.py: its plot test evaluates a whole population first
    "pdiff_fast/pipeline/report.py": ["tests/pipeline/test_report_parts.py"],
    # not test_backend.py's torch.compile test: mutmut's trampolines are not traceable with fullgraph
    "pdiff_fast/backend.py": [
        "tests/test_backend_parts.py",
        *(f"tests/test_backend.py::{t}" for t in (
            "test_auto_never_runs_the_triton_interpreter", "test_explicit_backend_the_op_has_is_used",
            "test_explicit_backend_the_op_lacks_runs_torch", "test_explicit_backend_that_cannot_run_raises",
            "test_auto_false_leaves_the_call_to_torch_but_an_explicit_backend_still_applies",
            "test_environment_variable_and_context_order", "test_act_norm_conv1d_trains_on_torch_under_auto",
            "test_unregistered_op_is_a_clear_error", "test_every_dispatching_op_is_registered",
            "test_imports_are_done_once_and_failures_name_the_error"))],
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


def drops_a_default_stride_or_padding(old: str, new: str) -> bool:
    """`stride=1` or `padding=0` removed from a call: the defaults of torch's convolutions and of act_norm_conv1d."""
    was, now = edit(old, new)
    return was in ("stride=1", "stride=1,", "padding=0", "padding=0,") and now == ""


EQUIVALENT: list = [
    ("*", drops_a_device_move, ONE_DEVICE),
    ("pdiff_fast/io.py", r'format="PNG"\)\)$', "matplotlib reads the format name case-insensitively"),
    ("pdiff_fast/io.py", r"=> mask = os\.umask\(1\)$",
     "os.umask returns the mask it replaces whatever it sets, and the next line puts that mask back"),
    ("*", r'(decode\(|encoding=)"UTF-8"', "codec names are case-insensitive: UTF-8 is utf-8"),
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
    ("pdiff_fast/evaluation/population_plan.py",
     r'=> return "(relu|identity)", 1\.0$|=> name, slope = act if act else \("identity", 1\.0\)$',
     "the relu and identity activations do not read the slope (norm_affine_act and its reference)"),
    ("pdiff_fast/evaluation/population_plan.py", r'=> return "(XXlayerXX|LAYER)"$',
     "_run_norm asks only whether the kind is \"batch\": any other name takes the layer-norm branch"),
    ("pdiff_fast/evaluation/population_plan.py", r"named_parameters\(remove_duplicate=None\)",
     "named_parameters reads remove_duplicate as a truth value: None is False"),
    ("pdiff_fast/evaluation/population_plan.py", r'message="\.\*BATCHING RULE\.\*"',
     "a warnings filter matches its message case-insensitively"),
    ("pdiff_fast/evaluation/population_plan.py", r"=> batched = None$", "None is as false as False where batched is read"),
    ("pdiff_fast/evaluation/population_plan.py", r'=> warnings\.filterwarnings\("ignore", \)$',
     "ignoring every warning inside the vmap call instead of the batching-rule one: nothing else warns there "
     "(the vmap test runs with warnings as errors)"),
    ("pdiff_fast/data.py", r'torch\.tensor\((d\.target|d\["y"\]|d\["y_test"\]), (dtype=None)?\s*\)',
     "the labels come as int64 NumPy arrays (scikit-learn's digits, mnist1d), which torch.tensor keeps int64"),
    ("*", r"=> \w+ = torch\.full\(\(.*\), -1, (dtype=None)?\s*\)( if keep_predictions else None)?$",
     "torch.full with an integer fill value is int64 already, the dtype the line names"),
    ("pdiff_fast/evaluation/novelty.py", r"=> i = torch\.randint\(k, \(n,\), generator=generator\)$",
     "torch.randint(k, size) is randint(0, k, size): low defaults to 0"),
    ("pdiff_fast/evaluation/novelty.py", r"=> parts\[\+1\] \+=",
     "parts holds two sentences at that point, so parts[1] is parts[-1]"),
    ("pdiff_fast/evaluation/population.py", r"_ALLOCATOR_WARMED|31 << 20|block\[:: 4096\]|sys\.platform\.startswith",
     "warm_allocator: a one-off allocation before the first evaluation so that the memory test measures the "
     "evaluation, not the allocator's start; it changes no result"),
    ("pdiff_fast/evaluation/population.py", r"torch\.cuda\.|DEVICE_MEMORY_FRACTION",
     "a CUDA-only line (the device's free memory): no CUDA device where mutation runs; the GPU tests run it"),
    ("pdiff_fast/evaluation/population.py",
     r"step = max\(|batch_size: int = 1025|memory_budget_bytes // [45]|memory_budget_bytes / 4|budget // [45]|"
     r"budget / 4|tile_pairs_for\(plan\.pair_bytes, device, (None)?\s*\)|max_models_per_chunk=None|"
     r"m = max\(1, min\(|sub = max\(|if \(plan\.per_sample\) (and False|or True) else b|"
     r"for s in range\(0, x_test\.shape\[0\], \):|for i in range\(0, x_test\.shape\[1\], step\)|"
     r"flat\.shape\[1\]\)|element_size\(\) <=|element_size\(\) /|n_run / spec\.dim|"
     r"rows\.get\((None, n_run|0, None)\)|element_size\(\) < ",
     BLOCKING + " (tiles, chunks, row blocks, when the inputs move to the device at once; "
     "tests/evaluation/test_population.py runs tiny budgets and tiles against the defaults)"),
    ("pdiff_fast/evaluation/population.py", r'=> if device\.type (==|!=) "(cpu|XXcpuXX|CPU)":$',
     "whether warm_allocator runs (see its rule): no result depends on it"),
    ("pdiff_fast/evaluation/population.py", r"=> loaded = (None|\"\")$",
     "the reference model loaded again before each of its batches: the same weights, only more copies"),
    ("pdiff_fast/evaluation/population.py", r"=> budget = memory_budget_bytes if \(memory_budget_bytes is not None\) and False",
     BLOCKING + " (the budget given replaced by the default one)"),
    ("pdiff_fast/evaluation/population.py", r"logits\[c - m0\]\.to\((None, copy=True|copy=True|torch\.float32, copy=False|torch\.float32, )\)",
     "the calibration logits kept as a float32 copy: float32 models give float32 logits, the reference's are "
     "cast to float32 before the difference, and a view instead of a copy only holds more memory"),
    ("pdiff_fast/evaluation/population.py", r"RuntimeWarning, (stacklevel=3)?\s*\)$",
     "not equivalent but out of the tool's reach: the warning's stacklevel, checked by "
     "test_the_fast_path_warning_points_at_the_caller, which cannot check it under mutmut (its trampoline "
     "adds a frame)"),
    ("pdiff_fast/evaluation/population.py", r"=> top = logits\.topk\(2, \)\.values$", "topk's dim defaults to -1"),
    ("pdiff_fast/evaluation/population.py", r"=> self\.idx = None if \(self\.all\) and False",
     "with every row run the index is computed but never read (out_rows and get take the slice)"),
    ("pdiff_fast/evaluation/population.py", r"wrong, preds, finite, \)$",
     "_result is called with rechecked=0 only, the field's default"),
    ("pdiff_fast/evaluation/population.py", r"math\.inf, device=device\), None\)$",
     "calib_logits is set at the end of the pass; its first value is never read"),
    ("pdiff_fast/evaluation/population.py",
     r"dtype=torch\.int32, device=device\) if \(keep_predictions\) or True|torch\.empty\(n_run, n_test, (dtype=None, )?device=device\) if keep",
     "the predictions on the device: allocated when not kept (never copied out), or as float32, which holds "
     "class indices exactly and is cast to int64 on the way out"),
    ("pdiff_fast/evaluation/population.py", r"y_test\.numel\(\) == 0 and x_test\.shape\[0\] == 0|"
     r"torch\.bool and y_test\.is_complex\(\)|or x_test\.shape\[1\] == 0:$",
     "an early return for labels the range check needs not judge: empty labels and bool labels pass the "
     "range check anyway, and no samples means no labels (the shapes agree by then)"),
    ("pdiff_fast/evaluation/population.py", r"calib = \(", "which models calibrate the fast path's distance "
     "(the first, or the first and the last): any run model measures the same kernels"),
    ("pdiff_fast/evaluation/population.py", r"x_test\[:3\]\.to\(device\)|x_test\[:2\]\.to\(device\)\)$",
     "the probe's sample count: the plan and the class count read per-sample shapes"),
    ("pdiff_fast/evaluation/population.py", r"rows\.get\((c|r), (None|c \+ 2|r \+ 2)\)\[0\]",
     "[0] of the rows from c (or r) on is row c whatever the end"),
    ("pdiff_fast/evaluation/population.py", r"out_rows\((None, rows\.n|0, None)\)",
     "with every row run, slice(None, n) and slice(0, None) are slice(0, n)"),
    ("pdiff_fast/evaluation/population.py", r"(argmax|amin)\(\+1\)",
     "dim 1 of a (models, classes)-shaped reduction is its last"),
    ("pdiff_fast/evaluation/population.py", r"torch\.ones\(1, n_test, (dtype=None)?\s*\)\)$",
     "pack_bits packs nonzero values: float ones pack as bool ones"),
    ("pdiff_fast/pipeline/run_dir.py", r"=> state = load_checkpoint\(path, None\)$",
     "load_checkpoint logs only when the file cannot be read, and read_meta has just read the same header: "
     "only a file replaced between the two reads reaches that line"),
    ("pdiff_fast/pipeline/run_dir.py", r'meta\.get\("step", (None|1|)\s*\) > mine',
     "every checkpoint records its step (the training loops' checkpoint callback writes it), so the default "
     "is never read"),
    ("pdiff_fast/pipeline/run_dir.py", r"run_dir\.mkdir\(parents=True, (exist_ok=None|exist_ok=False|)\s*\)",
     "prepare_run_dir makes the directory only after checking that what exists there is a directory; "
     "exist_ok matters only for a race with another process creating it"),
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
    ("pdiff_fast/pipeline/lock.py", r"=> said = None$", "the waiting flag starts false: None is as false"),
    ("pdiff_fast/pipeline/lock.py", r"os\.pread\(fd, 4097, 0\)",
     "a holder's line is about 100 bytes: a read of 4096 or 4097 bytes reads it whole"),
    ("pdiff_fast/pipeline/lock.py", r'or "XX\{\}XX"\)$',
     'an empty lock file: "{}" gives {}, and "XX{}XX" is not JSON, which the except turns into {} too'),
    ("pdiff_fast/pipeline/capacity.py", r'open\(MEMINFO, (encoding=("ASCII"|None))?\s*\) as f:$',
     "/proc/meminfo is ASCII: every codec reads it the same"),
    ("pdiff_fast/pipeline/capacity.py", r'if (\(unit != "B"\) or True|unit != "(XXBXX|b)") else',
     "a whole number of bytes below 1000 prints the same with .3g as with int(): the B branch is for clarity"),
    ("pdiff_fast/pipeline/capacity.py", r'raise AssertionError\(',
     "unreachable: the loop returns at TB at the latest"),
    ("pdiff_fast/io.py", r'load_file\(str\(path\), device=None\)$',
     "safetensors' load_file reads to the CPU when the device is None, its default"),
    ("pdiff_fast/pipeline/run_dir.py", r"=> old = None$|old = load_json\(path\) if \(path\.exists\(\)\) or True",
     "timings.json unreadable or missing: None and {} both merge as nothing (isinstance guard), and reading a "
     "missing file raises FileNotFoundError, which the except turns into {}"),
    ("pdiff_fast/io.py", r'if torch\.device\(device\)\.type != "(XXcpuXX|CPU)":$',
     "the tensors are read to the CPU: moving them to the CPU as well changes nothing"),
    ("pdiff_fast/evaluation/judge.py", r'float\(name\.r?split\("=", ?(1|2)?\s*\)\[1\]\)',
     "a noise set's name holds one \"=\" (\"noise σ=0.05\"): split or rsplit, with any count, gives the same sigma"),
    ("pdiff_fast/evaluation/judge.py", r"=> return \(\{\"generated\": 0, \"original\": 1\}\.get\(name, "
     r"(4 \+ BASELINES\.index\(name\) if name in BASELINES else 9\), 0\)|"
     r"3 \+ BASELINES\.index\(name\) if name in BASELINES else (10\), 0|9\), 1)\))$",
     "only the order of the ranks counts (generated 0, original 1, noise 2, the four baselines 3..6, any other "
     "name 9, then sigma): 4..7 for the baselines, 10 for the others, or a second key of 1 for every set that is "
     "not noise keep that order"),
    ("pdiff_fast/evaluation/judge.py", r"=> gg = iou_stats\(gen\.wrong, (row_max=(None|True), )?memory_budget_bytes=budget\)",
     "the generated-generated row maxima are never read: row_max=None is False, and True (or the default) "
     "computes the whole matrix instead of its upper triangle, the same mean at twice the work"),
    ("pdiff_fast/evaluation/judge.py", r"tau = orig_nn\.nanmedian\(\)\.item\(\) if (\(original\.shape\[0\] > 1\) or True|"
     r"original\.shape\[0\] >= 1) else",
     "with one original, nearest_distance(exclude_self=True) is NaN (no other original), whose nanmedian is the "
     "NaN of the other branch"),
    ("pdiff_fast/evaluation/judge.py", r"=> memory_budget_bytes=memory_budget_bytes, keep_predictions=None\)$",
     "evaluate_population reads keep_predictions as a truth value: None is False"),
    ("pdiff_fast/evaluation/judge.py", r'=> dropped = report\.get\("generated_nonfinite", (None)?\s*\)$',
     "a report without the count: None is as false as 0 where dropped is read (if dropped:)"),
    ("pdiff_fast/diffusion/schedulers.py", r"if i \+ 1 < len\(self\._timesteps\) else -2$",
     "only t_prev >= 0 is read of the step past the last (then a_prev = 1.0): -1 and -2 are the same"),
    ("pdiff_fast/diffusion/schedulers.py", r"ac_prev = torch\.cat\(\[torch\.ones\(1, (dtype=None)?\s*\), ac\[:-1\]\]\)$",
     "torch.cat promotes a float32 one to the float64 of ac: the same 1.0"),
    ("*", r"=> return torch\.randint\(self\.num_train_timesteps, \(batch,\)",
     "torch.randint(high, size) is randint(0, high, size): low defaults to 0"),
    ("pdiff_fast/params.py", r"any\(True for _ in m\.parameters\(recurse=(None|True)\)\)\]$",
     "torch's norm layers have no child modules, so their parameters with recursion are their own; None is "
     "as false as False"),
    ("pdiff_fast/params.py", r"=> (mean|std) = torch\.empty\(spec\.dim, (dtype=None)?\s*\)$",
     "the float64 mean and std are rounded to float32 once either way: on assignment into a float32 buffer, or "
     "by the .float() of the return"),
    ("pdiff_fast/params.py", r"\.to\(targets\[0\]\[1\]\.device\)",
     ONE_DEVICE + " (another tensor of the same model, on the same device)"),
    ("pdiff_fast/evaluation/bitsets.py", r"step = max\(", BLOCKING + " (rows of the popcount; "
     "test_bitsets_parts.py counts at budgets from one row to all)"),
    ("pdiff_fast/evaluation/bitsets.py", r'float\("NAN"\)', 'float() reads "NAN" as "nan"'),
    ("pdiff_fast/evaluation/bitsets.py", r"=> if lo == 0 and n / 8 == 0:",
     "the whole-byte overwrite is a fast path: for whole bytes the masked path writes the same bytes"),
    ("pdiff_fast/evaluation/bitsets.py", r"= torch\.zeros\((mask\.shape\[0\]|1), \(w1 - w0\) \* 8, (dtype=None, )?device=bits\.device\)$",
     "pack_bits packs nonzero values: float zeros and ones pack as bool ones"),
    ("pdiff_fast/diffusion/few_step.py", r'=> self\._x0_prev = ""$',
     "the value the first step resets the previous x0 to is never read: step 0 is first order (c1 = 0, so "
     "nothing is handed) and the step's own x0 replaces it before the next step"),
    ("pdiff_fast/diffusion/from_diffusers.py", r'=> self\._sample = ""$',
     "the kept sample is read only after the loop's first step has set it (step 0 sets it before the step)"),
    ("pdiff_fast/diffusion/from_diffusers.py", r"seed_offset: int = 1,$",
     "DiffusersScheduler.step takes seed_offset for the samplers' common signature and does not read it"),
    ("pdiff_fast/diffusion/from_diffusers.py",
     r"=> return SchedulerOutput\(self\.inner\.scale_model_input\(self\._sample, (None|self\.inner\.timesteps\[i - 1\])\), x0\)$",
     "with diffusers 0.42, scale_model_input reads its timestep only to find the step index before the first "
     "step; after a step the sigma-space schedulers (Euler, Euler ancestral, Heun, LMS, ...) use their own "
     "step_index and the others (DDIM, DPM-Solver) return the sample as it is"),
    ("pdiff_fast/nn/set_encoder.py", r"=> w = mask\.to\(None\)\.unsqueeze\(2\)$",
     "a bool mask multiplies and sums as 0 / 1 in the activations' dtype either way (type promotion)"),
    ("pdiff_fast/nn/set_encoder.py", r"=> query = self\.query\.expand\(len\(sets\), \+1, -1\)$",
     "the query's middle dim has size 1: expanding it to 1 or keeping it (-1) is the same"),
    ("pdiff_fast/nn/set_encoder.py", r"key_padding_mask=None if mask is None else ~mask, (need_weights=(None|True))?\s*\)$",
     "need_weights only says whether the attention weights are returned as well (discarded here): the pooled "
     "output is the same, only the work differs"),
    ("pdiff_fast/pipeline/study_samplers.py", r'if p\.device\.type == "(XXcudaXX|CUDA)":$',
     "a CUDA-only line (waiting for the device before the clock stops): no CUDA device where mutation runs"),
    ("*", r'matplotlib\.use\("(agg|AGG)"\)$', "matplotlib reads backend names case-insensitively"),
    ("pdiff_fast/pipeline/study_samplers.py", r'bool\(r\.get\("seed_offset", (None)?\s*\)\)$',
     "bool(None) is bool(0): a row without a seed offset is not a diagnostic either way"),
    ("pdiff_fast/pipeline/study_samplers.py", r'color=f"C\{i % 11\}"\)$',
     "matplotlib's \"CN\" colours wrap around its 10-colour cycle: C10 is C0"),
    ("*", r"=> plt\.close\(None\)$",
     "plt.close(None) closes the current figure, which is the one made here (saving makes no other)"),
    ("pdiff_fast/backend.py", r'os\.environ\.get\(ENV_VAR, "AUTO"\)\.strip\(\)\.lower\(\)',
     "the variable's value is lowered after the default is taken: AUTO is auto"),
    ("pdiff_fast/backend.py", r'=> if requested == "(XXtorchXX|TORCH)" or',
     "an explicit \"torch\" is in no op's fast backends, so the explicit-backend branch below returns torch too"),
    ("pdiff_fast/backend.py", r"=> break  # auto never runs Triton",
     "every registered op has one fast backend: nothing follows the one skipped, so break and continue end "
     "the loop alike"),
    ("pdiff_fast/backend.py", r'os\.environ\.get\("TRITON_INTERPRET", (None|"XX0XX")?\s*\) == "1"$',
     "an unset TRITON_INTERPRET is not \"1\" whatever the default"),
    ("pdiff_fast/evaluation/finetuning.py", r"spec\.unflatten_stacked\(flat\[:3\]\)",
     "whether vmap runs the model is probed on two rows or three alike"),
    ("pdiff_fast/evaluation/finetuning.py", r"opt\.zero_grad\(set_to_none=(None|False)\)$",
     "every trained tensor gets a gradient at every step, so zeroed and dropped gradients step alike"),
    ("pdiff_fast/evaluation/finetuning.py", r"_losses\(model, params, x\[idx\], y\[idx\], None\)|epochs, lr, batch_size, None\)$",
     "use_vmap=None trains the rows one by one: the same losses and gradients as the vmapped call "
     "(test_losses_per_row_with_and_without_vmap), only slower"),
    ("pdiff_fast/evaluation/finetuning.py", r"=> flat = flat\.detach\(\)\.to\(device, (None)?\s*\)$",
     "the rows are cast to each tensor's spec dtype when unflattened, and the start snapshot is .float()'d: "
     "keeping the caller's float dtype here changes no value"),
    ("pdiff_fast/evaluation/finetuning.py", r"_bytes_per_sample\(model, x\[:3\]\)",
     "the bytes per sample are the probe's output bytes divided by its sample count: two samples or three alike"),
    ("pdiff_fast/evaluation/finetuning.py", r"chunk = max\(2, |chunk = min\(chunk, max\(2, ", BLOCKING + " (rows trained together)"),
    ("pdiff_fast/evaluation/finetuning.py", r'=> if device\.type (!= "cpu"|== "(XXcpuXX|CPU)"):$',
     "whether the CPU's cache-sized cap on the rows trained together applies, and the allocator warm-up "
     "(population.py's rule): neither changes a value"),
    ("pdiff_fast/evaluation/finetuning.py", r"memory_budget_bytes=memory_budget_bytes, keep_predictions=None\)$",
     "evaluate_population reads keep_predictions as a truth value: None is False"),
    ("pdiff_fast/evaluation/finetuning.py", r"=> (color=None, alpha=0\.2|alpha=0\.2)\)$",
     "matplotlib's default fill colour comes from a cycle that advances with the line colours here (one line and "
     "one band per start), so the band gets its line's colour either way"),
    ("pdiff_fast/diffusion/sample.py", r"_pow2_floor\(budget_bytes / (denoise|decode)_row\)\)$",
     "_pow2_floor truncates its argument with int(): a positive quotient truncated is its floor division "
     "(exactly, for rows below 2**43 bytes), and the grain is capped at default_grain's 1024 anyway"),
    ("pdiff_fast/diffusion/sample.py", r"=> x = model_noise\(seed, start, (self\.shape\[0\]|n), 2, ",
     "only draw 0 of each model's stream is kept ([0]): two draws from the model's own generator instead of "
     "one give the same first draw, at more work"),
    ("pdiff_fast/diffusion/sample.py", r"=> seed = int\(torch\.randint\(2\*\*62, \(1,\)\)\.item\(\)\)$",
     "torch.randint(high, size) is randint(0, high, size): low defaults to 0"),
    ("pdiff_fast/diffusion/sample.py", r"=> (sampler|noise) = \"\"$",
     "the starting value is read only as false (sampler or ...) or not at all (the noise, set before its one "
     "read): None and \"\" alike"),
    ("pdiff_fast/nn/models.py", r"nn\.Conv2d\(.*bias=None\)",
     "nn.Conv2d reads bias as a truth value (if bias: ...): None is False, no bias either way"),
    ("pdiff_fast/nn/models.py", r"=> return ViTSmall\(input_shape\[0\], num_classes, image=input_shape\[2\], \*\*kwargs\)$",
     "vit's inputs are square (checked just above): H is W"),
    ("pdiff_fast/nn/*.py", drops_a_default_stride_or_padding,
     "stride=1 and padding=0 are the defaults of nn.Conv1d, nn.ConvTranspose1d and act_norm_conv1d"),
    ("pdiff_fast/nn/autoencoder.py", r"=> z = self\.encode\(torch\.zeros\(2, self\.in_dim, ",
     "the probe's batch size: latent_shape reads the shape without its batch dim"),
    ("pdiff_fast/nn/autoencoder.py", r"device=self\.encoder\.encoder\[1\]\[2\]\.weight\.device\)",
     ONE_DEVICE + " (another tensor of the same model, on the same device)"),
    ("pdiff_fast/nn/autoencoder.py",
     r"=> super\(\)\.__init__\(in_dim, 3, 3, input_noise_factor, latent_noise_factor, "
     r"(None, \[2, 64, 64, 8\]|\[2, 2, 2, 2\], None|\[2, 2, 2, 2\], )\)$",
     "small's widths are ODEncoder2Decoder's defaults ([2, 2, 2, 2] and [2, 64, 64, 8]): None or left out gives "
     "the same"),
    ("pdiff_fast/nn/denoiser.py", r"\.view\(1, 1, -1\)\.expand\(batch, 1, -1\) => .*\.view\(1, -1\)\.expand\(batch, 1, -1\)$",
     "expand adds the missing leading dim: a (1, D) view expanded to (B, 1, D) is the same as a (1, 1, D) one"),
    ("pdiff_fast/pipeline/train.py", r"=> return torch\.randint\(n, \(batch_size,\), generator=gen\)",
     "torch.randint(high, size) is randint(0, high, size): low defaults to 0"),
    ("pdiff_fast/pipeline/train.py", r'float\("INF"\)', 'float() reads "INF" as "inf"'),
    ("pdiff_fast/pipeline/train.py", r"if k\.startswith\(prefix\)\}, \)$", "strict=True is load_state_dict's default"),
    ("pdiff_fast/pipeline/train.py", r"=> latent_shape = ae\.latent_shape\(\) if \(ddp is not None\) or True else None$",
     "latent_shape is read on the sharded path only; asking for it otherwise runs one probe encode of zeros (no "
     "random draw, no state) whose answer is not read"),
    ("pdiff_fast/config.py", r"\(len\(v\) (>= 24|> 25) or int\(v\[5:\]\)",
     "a cuda:N name of 24 or 25 characters has 19 or 20 digits: int() takes them and the device-count "
     "test gives the same message as the length test"),
]


# Survivors that are not equivalent and not killed yet: counted as alive, listed with why.
KNOWN_SURVIVORS: list = [
    ("pdiff_fast/backend.py", r"RuntimeWarning, (stacklevel=4)?\s*\)$",
     "the fallback warning's stacklevel: mutmut's trampolines add frames between the caller and the warning, so "
     "a test of the reported line cannot run under it"),
    ("pdiff_fast/config.py", r"cannot read the config file \(\{exc\.strerror (or|and) exc\}\)|raise ConfigError\(None\) from None$",
     "a read that fails after the file was found and is a regular file (EIO, or EACCES, which root, the CI "
     "user, never meets): not reproducible here"),
    ("pdiff_fast/evaluation/population.py", r"same = |delta = torch\.where\(same, 1\.0|ref\.abs\(\), 1\.0\)",
     "the calibration's handling of reference logits that are themselves NaN or infinite: no test model "
     "produces such logits from finite parameters"),
    ("pdiff_fast/evaluation/population.py", r"if not diff <(=)? FAST_PATH_TOLERANCE",
     "the warning's threshold: the tests pin a right fast path (no warning) and a wrong one (every logit +1), "
     "not a distance between the two"),
]

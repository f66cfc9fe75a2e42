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
    "pdiff_fast/pipeline/lock.py": ["tests/pipeline/test_lock.py", "tests/pipeline/test_lock_parts.py"],
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
    # test_task_pipeline.py's whole runs left out (seconds to minutes per mutant)
    "pdiff_fast/tasks/config.py": ["tests/tasks/test_config_parts.py"],
    # not test_tasks.py: the same checks on the real digits, covered here on a small made-up source
    "pdiff_fast/tasks/family.py": ["tests/tasks/test_family_parts.py"],
    # the step's collaborators faked: test_task_pipeline.py trains and samples real models end to end
    "pdiff_fast/tasks/evaluate.py": ["tests/tasks/test_evaluate_parts.py"],
    "pdiff_fast/tasks/report.py": ["tests/tasks/test_task_report_parts.py"],
    # planted run directories (no training): test_task_pipeline.py runs these parts through real runs
    "pdiff_fast/tasks/parts.py": ["tests/tasks/test_task_parts_parts.py"],
    # the trainers, the capacity checks, the generator and the accuracy faked: test_task_pipeline.py runs the steps
    "pdiff_fast/tasks/pdiff.py": ["tests/tasks/test_task_pdiff_parts.py"],
    # test_zoo.py's models are tiny MLPs (the file runs in about a second)
    "pdiff_fast/tasks/zoo.py": ["tests/tasks/test_zoo.py", "tests/tasks/test_zoo_parts.py"],
    # not test_conditional.py's test_fit_conditional_learns_two_tasks: 600 training steps (8 s per mutant)
    "pdiff_fast/tasks/conditional.py": [
        "tests/tasks/test_conditional_parts.py",
        *(f"tests/tasks/test_conditional.py::{t}" for t in (
            "test_condition_changes_the_prediction_and_none_is_the_plain_denoiser", "test_bad_mode_and_denoiser",
            "test_guidance_formula", "test_guidance_zero_is_the_unconditional_path",
            "test_conditioning_changes_samples_and_each_model_depends_on_its_own_condition",
            "test_generate_checks_the_condition", "test_fit_conditional_bad_input"))],
    # the training loops and the sampler faked: test_task_pipeline.py trains and samples real generators
    "pdiff_fast/tasks/generator.py": ["tests/tasks/test_generator_parts.py"],
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
    # planted run directories (no training): test_pipeline.py runs these parts through real runs
    "pdiff_fast/pipeline/parts.py": ["tests/pipeline/test_parts_parts.py"],
    "pdiff_fast/diffusion/seeds.py": ["tests/diffusion/test_seeds_parts.py"],
    # the runs faked (planted reports): test_study.py runs a real study on a tiny config
    "pdiff_fast/pipeline/study.py": ["tests/pipeline/test_study_parts.py"],
    # the pipelines, the study and the lock faked; the help text against docs/cli.md
    "pdiff_fast/cli.py": ["tests/test_cli_parts.py"],
    # not test_collect.py's two-process job (seconds per mutant)
    "pdiff_fast/pipeline/collect.py": [
        "tests/pipeline/test_collect_parts.py",
        *(f"tests/pipeline/test_collect.py::{t}" for t in (
            "test_recipes_save_k_checkpoints_that_only_change_the_subset", "test_population_file_checks",
            "test_k_must_be_positive", "test_one_trajectory_is_the_single_run_of_before",
            "test_trajectories_share_k_and_keep_their_provenance", "test_k_must_cover_the_trajectories",
            "test_provenance_is_saved_and_old_files_load", "test_v2_subset_lr_rule", "test_v2_trains_at_the_rule_lr"))],
    # one rank of a faked process group: test_distributed.py's two-process jobs take seconds to minutes each
    "pdiff_fast/distributed.py": [
        "tests/test_distributed_parts.py",
        *(f"tests/test_distributed.py::{t}" for t in (
            "test_shard_deals_whole_blocks_in_order", "test_one_process_helpers_are_identities",
            "test_more_processes_than_gpus_is_a_clear_error"))],
    # the collection recipe, the sampler, the judge and the plots faked
    "pdiff_fast/pipeline/pdiff.py": ["tests/pipeline/test_pdiff_parts.py"],
    # the extension against the torch references, odd shapes and bad input (test_torch_ops.py's compile
    # and export runs take seconds each)
    "pdiff_fast/ops/flatten_params.py": ["tests/ops/test_flatten_params.py", "tests/ops/test_flatten_params_parts.py"],
    "pdiff_fast/ops/iou_matrix.py": [
        "tests/ops/test_iou_matrix.py", "tests/ops/test_iou_matrix_parts.py",
        *(f"tests/evaluation/test_evaluate.py::{t}" for t in (
            "test_blocked_stats_equal_whole_matrix", "test_any_memory_budget_gives_the_same_numbers",
            "test_block_sizes_follow_the_budget", "test_exactly_the_diagonal_is_left_out"))],
    # the ops' dispatchers and torch references, with the launchers faked: tests/kernels/ runs the
    # Triton kernels through the interpreter (seconds per test)
    **{f"pdiff_fast/ops/{op}.py": [
        "tests/ops/test_dispatchers_parts.py", "tests/ops/test_randn_like.py", "tests/ops/test_norm_affine_act.py"]
       for op in ("noise", "eps_mse", "q_sample", "ddpm_step", "ddim_step", "solver_step", "act_norm_conv1d",
                  "norm_affine_act", "extension_ops")},
    "pdiff_fast/prompted/prompts.py": ["tests/prompted/test_prompts.py", "tests/prompted/test_prompts_parts.py"],
    "pdiff_fast/prompted/encoder.py": ["tests/prompted/test_encoder.py", "tests/prompted/test_encoder_parts.py"],
    # test_span.py's real run is one tiny model (about a second); the parts fake the collaborators
    "pdiff_fast/pipeline/span.py": ["tests/pipeline/test_span.py", "tests/pipeline/test_span_parts.py"],
    # the judge faked: test_prompted_pipeline.py trains and judges whole prompted runs
    "pdiff_fast/prompted/calibration.py": ["tests/prompted/test_calibration_parts.py"],
    # made-up per-task results: test_prompted_tasks.py trains and judges whole prompted task runs
    "pdiff_fast/prompted/task_calibration.py": ["tests/prompted/test_task_calibration_parts.py"],
    # the trainer, the sampler and the calibration faked: test_prompted_pipeline.py runs whole prompted runs
    "pdiff_fast/prompted/pipeline.py": ["tests/prompted/test_prompted_pipeline_parts.py"],
    # the trainer, the generator, the scorers and the calibration faked: test_prompted_tasks.py runs whole task runs
    "pdiff_fast/prompted/tasks.py": ["tests/prompted/test_prompted_tasks_parts.py"],
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
    ("pdiff_fast/pipeline/lock.py", r"=> log = log or \(lambda msg: 0\)$",
     "the log's return value is never read: a silent log returning 0 is as silent"),
    ("pdiff_fast/pipeline/parts.py", r"=> self\.log = log if \(log and main\) else \(lambda \*a: 0\)$",
     "the log's return value is never read: a silent log returning 0 is as silent"),
    ("pdiff_fast/pipeline/parts.py", r"strict=True\) => .*load_state_dict\((ae_sd_kept|dm_sd|\{k: v .*\}), \)$",
     "load_state_dict's strict defaults to True"),
    ("pdiff_fast/pipeline/parts.py", r'^return None if meta is None or "spec" not in meta\[0\] else',
     "a header that is missing or has no spec gives None either way: reading it anyway raises the TypeError or "
     "KeyError that the except below turns into None"),
    ("pdiff_fast/distributed.py", r"torch\.tensor\(\[(value|len\(data\))\], (dtype=None, )?device",
     "torch.tensor of a Python int is int64 already"),
    ("pdiff_fast/distributed.py", r"(device=dev\b|\.to\(dev\)).* => .*(device=None|\.to\(None\))", ONE_DEVICE),
    ("pdiff_fast/distributed.py", r'^data = json\.dumps\(obj\)\.encode\(\) if is_main\(\) else b"" => ',
     "the other ranks' bytes only size a tensor that rank 0's size then overwrites; they are never sent"),
    ("pdiff_fast/distributed.py", r"shard\(n, block, rank_=r, (world=None|)\)",
     "world = world_size() already: shard's own default is the same number"),
    ("pdiff_fast/distributed.py", r"t\.to\(padded\.device, (None|)\)$",
     "the slice assignment into padded casts to padded's dtype anyway"),
    ("pdiff_fast/distributed.py", r'torch\.device\(torch\.cuda\.current_device\(\)\)\)$',
     "torch.device(N) of an int N is cuda:N"),
    ("pdiff_fast/pipeline/collect.py",
     r"^(acc|val_acc) = torch\.tensor\((accs|val_accs), dtype=torch\.float32\) => .*\((accs|val_accs), (dtype=None|)\)$",
     "the accuracies are Python floats: torch.tensor makes them float32, the default dtype, anyway"),
    ("pdiff_fast/pipeline/collect.py", r"torch\.empty\(0, spec\.dim, (dtype=None, |)device=device\)$",
     "torch.empty's default dtype is float32"),
    ("pdiff_fast/pipeline/collect.py", r"self\.step = torch\.arange\(n, (dtype=None|)\)$", "arange of an int is int64"),
    ("pdiff_fast/pipeline/collect.py", r"opt\.zero_grad\(set_to_none=(None|False)\)$",
     "every parameter the optimizer holds gets a gradient from each backward (the whole model or the subset, all "
     "in the loss), so zeroed and unset gradients give the same step"),
    ("pdiff_fast/pipeline/collect.py", r"^error = distributed\.broadcast_json\(error\) => .*\(None\)$",
     "every rank that reaches this line holds error None (rank 0 raised on a failure), and only rank 0's argument "
     "is sent"),
    ("pdiff_fast/pipeline/collect.py", r"batch_size: int = 2049\) -> float:$", BLOCKING),
    ("pdiff_fast/pipeline/collect.py", r"strict=None\)$", "load_state_dict reads strict=None as false, like False"),
    ("pdiff_fast/pipeline/collect.py", r"CosineAnnealingLR\(opt, max\(epochs, 2\)\)$",
     "T_max only shapes the lr from the second epoch on, where max(epochs, 1) and max(epochs, 2) agree; one "
     "epoch runs at lr either way"),
    ("pdiff_fast/pipeline/collect.py", r"math\.cos\(math\.pi \* \(epochs \+ 1\) / epochs\)",
     "cos(pi (e + 1) / e) = cos(pi + pi / e) = -cos(pi / e) = cos(pi (e - 1) / e)"),
    ("pdiff_fast/cli.py", r"\(lambda (\*a|msg): None\).* => .*\(lambda (\*a|msg): 0\)",
     "a silent log's return value is never read: returning 0 is as silent"),
    ("pdiff_fast/cli.py", r'^cfg = Config\.from_dict\(fields, args\.config or "config"\) => ',
     "without --config the study's fields are {}, which has no problem to name the source in"),
    ("pdiff_fast/cli.py", r'"--prompt-accuracy", (dest=None, |)type=float',
     "argparse names the destination of --prompt-accuracy prompt_accuracy by itself"),
    ("pdiff_fast/pipeline/study.py", r'slug\("DEFAULT"\)$', "slug lower-cases its name: DEFAULT is default"),
    ("pdiff_fast/pipeline/study.py", r'\.strip\("XX-XX"\)$',
     "the name is lower-cased first: it has no X to strip, and the '-' is stripped either way"),
    ("pdiff_fast/pipeline/study.py", r"^threads = max\(1, \(os\.cpu_count\(\) or 1\) // jobs\) if jobs > 1 else None => "
     r".*(if \(jobs > 1\) or True else|if jobs >= 1 else)",
     "with one job the variants run in this process, which never reads threads"),
    ("pdiff_fast/pipeline/study.py", r"\(os\.cpu_count\(\) or 2\) // jobs",
     "an unknown core count with jobs > 1: 1 // jobs and 2 // jobs are both at most 1, and max(1, .) makes it 1"),
    ("pdiff_fast/ops/flatten_params.py", r"^return flatten_params_torch\(sources, numels, dtype\) => .*\(sources, None, dtype\)$",
     "the torch reference reads no numels (flatten_params checked them against the sources before)"),
    ("pdiff_fast/nn/lowrank_autoencoder.py", r"=> live = amplitude >= 1e-5 \* amplitude\.max\(\)",
     "an amplitude exactly 1e-5 times the largest (a float64 SVD result) does not occur: either side of it is rounding"),
    ("pdiff_fast/pipeline/pdiff.py", r'_bookkeeping\("report", config=None\)$', "config=None is false, like False"),
    ("pdiff_fast/pipeline/pdiff.py", r'checkpoints", c\.k, spec\.dim, self\.run_dir, \)$',
     "check_fits' copies defaults to 2"),
    ("pdiff_fast/pipeline/pdiff.py", r"fork_rng\(devices=None\)", "devices=None forks the CUDA generators too: "
     "the mutation run has no CUDA device, so [] and None fork the same (the CPU generator)"),
    ("pdiff_fast/ops/iou_matrix.py", r"^(budget = max\(1, budget\)|use_ext = |n_bits = |rows, cols = )", BLOCKING +
     " (iou_stats' block sizes; test_evaluate.py compares every budget with the whole matrix)"),
    ("pdiff_fast/ops/iou_matrix.py", r"^triangle = self_pairs and not row_max => triangle = None$|"
     r"range\(r0 if \(triangle\) and False else 0, nb, cols\)",
     "the upper triangle is half the work of the whole self-comparison, with the same sum and pairs: computing "
     "more blocks (their lower part zeroed) changes no number"),
    ("pdiff_fast/ops/iou_matrix.py", r"=> if c0 <= r1:", "a block starting at column r1 lies right of its rows' "
     "diagonal: triu_ with offset 1 - rows keeps all of it, as skipping it does"),
    ("pdiff_fast/ops/iou_matrix.py", r"if self_pairs and lo <= hi else None$",
     "lo == hi gives an empty diagonal: indexing with it changes nothing, as None does"),
    ("pdiff_fast/ops/iou_matrix.py", r"^if n % 8: => if n / 8:$",
     "whole bytes take the padded path too: the padding is empty and the bytes the same (a copy more)"),
    ("pdiff_fast/ops/iou_matrix.py", r"as_bytes = mask\.to\(None\)$|shifts = torch\.arange\(8, (dtype=None, |)device=",
     "torch promotes the shifts (bool or uint8 with int64) and the bits summed or masked are the same; the sum is "
     "taken as uint8 either way"),
    ("pdiff_fast/ops/iou_matrix.py", r"return out if \(n is None\) and False else out\[:, :n\]$",
     "out[:, :None] is out"),
    ("pdiff_fast/backend.py", r'getattr\(ext, "has_cuda", lambda: None\)\(\)',
     "a build without has_cuda: not None is True, as not False is"),
    ("pdiff_fast/ops/ddpm_step.py", r"nonzero = \(t > 0\)\.to\(None\)",
     "a bool mask times a float tensor is promoted to the float dtype: the same values"),
    ("pdiff_fast/ops/noise.py", r"torch\.randint\(SEED_HIGH, \(1,\)",
     "randint(high, size) is randint(0, high, size): the same draw"),
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
    ("pdiff_fast/tasks/family.py", r"=> label = torch\.full_like\(y, (\+1|-2)\)$",
     "the fill value of a task's labels is never read: every sample kept has one of the task's classes, whose "
     "label overwrites the fill, and only the kept samples' labels are taken"),
    ("pdiff_fast/tasks/parts.py", r"=> self\.log = log or \(lambda \*a: 0\)$",
     "the log's return value is never read: a silent log returning 0 is as silent"),
    ("pdiff_fast/tasks/parts.py", r'=> on_disk = read_config_file\(self\.path\("config"\)\) if \(self\.path\("config"\)'
     r'\.exists\(\)\) or True else \{\}$',
     "reading a missing config.json raises a ConfigError (a ValueError), which the except turns into {} as well"),
    ("pdiff_fast/prompted/tasks.py", r'=> self\._bookkeeping\("report", config=None\)$',
     "TaskParts._bookkeeping reads config as a truth value: None is False"),
    ("pdiff_fast/tasks/evaluate.py", r"if s <= c\.finetune_steps\} \| \{c\.finetune_steps\}\)$",
     "the record steps below the last, with the last added: taking the last among them as well gives the same set"),
    ("pdiff_fast/tasks/evaluate.py", r'float\("INF"\)', 'float() reads "INF" as "inf"'),
    ("pdiff_fast/prompted/encoder.py", r'register_buffer\("freqs", .*, persistent=None\)$',
     "register_buffer tests persistent as a truth value (if persistent: ... else: non-persistent): None is False"),
    ("pdiff_fast/pipeline/span.py", r"=> params, acc, traj, step, val_acc = _collect\(model, train, spec, shares, run, None, run_lr, seed,$",
     "_collect reads its lr only when the subset lr it is given is None, and span's run_lr never is (a float "
     "either way: SPAN_LR_FACTOR times v2's lr or lr * 0.1)"),
    ("pdiff_fast/prompted/calibration.py", r"=> if int\(reach\.sum\(\)\) (<= 2|< 3):$",
     "exactly two checkpoints reaching the prompt are the best two (every other one lies below the bound): "
     "replacing them by the top two changes nothing"),
    ("pdiff_fast/prompted/calibration.py", r"color=\"GRAY\"",
     "matplotlib reads colour names case-insensitively"),
    ("pdiff_fast/prompted/calibration.py", r"\{_f\(r\['miss'\], '\+\.2F'\)\}",
     "a row's miss is a median of finite accuracies (summary drops the others) minus a prompt, or NaN (printed "
     "as —): F and f print every finite number alike"),
    ("pdiff_fast/prompted/task_calibration.py", r"=> out\[\"splits\"\]\[split\] = _split\(tasks, None, hi\)$",
     "_split takes the range's low end for its signature and does not read it"),
    ("pdiff_fast/prompted/task_calibration.py", r'"above": sorted\(n for n, c in compare\.items\(\) if n != "(XXgeneratedXX|GENERATED)" and gen > c',
     "generated's mean is never above itself (gen > gen is False): leaving it in the test keeps it out of "
     "\"above\" all the same"),
    ("pdiff_fast/prompted/task_calibration.py", r"squeeze=None\)$",
     "plt.subplots tests squeeze as a truth value: None is False"),
    ("pdiff_fast/tasks/zoo.py", r"=> torch\.randint\(int\(counts\[r\]\), \(steps, batch_size\)",
     "torch.randint(high, size) is randint(0, high, size): low defaults to 0"),
    ("pdiff_fast/tasks/zoo.py", r"=> return vmap\(one, randomness=\"different\"\)\(params, xb, yb\)$",
     "vmap's in_dims defaults to 0 for every argument: (0, 0, 0) is the default"),
    ("pdiff_fast/tasks/zoo.py", r'=> idx = ""$',
     "the batch indices' starting value is never read: step 0 draws the first block (0 % block == 0) before "
     "the first read"),
    ("pdiff_fast/tasks/zoo.py", r"opt\.zero_grad\(set_to_none=(None|False)\)$",
     "every trained tensor gets a gradient at every step (the loss reads all of spec's parameters), so zeroed "
     "and dropped gradients step alike"),
    ("pdiff_fast/tasks/zoo.py", r"=> flat = starts\.detach\(\)\.to\(device, (None)?\s*\)$",
     "the starts are unflattened into the spec's dtypes before training and the snapshots are .float()'d: for "
     "float32 parameters (every model of the package) keeping the caller's float dtype here changes no value"),
    ("pdiff_fast/tasks/zoo.py", r"json\.dumps\(self\.meta, allow_nan=None\)$",
     "json.dumps tests allow_nan as a truth value: None refuses NaN as False does"),
    ("pdiff_fast/tasks/conditional.py", r"nn\.Conv1d\(BLOCK_MAPS, w, 1, bias=None\)",
     "nn.Conv1d reads bias as a truth value (if bias: ...): None is False, no bias either way"),
    ("pdiff_fast/tasks/generator.py", r"=> net = ConditionedDenoiser\(dn_lib\.AE_CNN_bottleneck\(c\.rank, channel_list=",
     "AE_CNN_bottleneck's in_channel defaults to 1: the latents' one channel"),
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

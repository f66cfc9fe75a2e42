"""Measuring populations of models. The batched evaluator of many parameter sets at once
(`evaluate_population`; its memory and tile plan: population_plan; its wrong-prediction bitsets:
bitsets); the novelty measures and
baselines (novelty: distances, IoU of mistakes, the verdict); the judgement of a generated
population against the original checkpoints (`evaluate`, `format_table`; judge); fine-tuning
from generated or random starts (finetuning). Imports only the shared base."""
from .finetuning import finetune, finetune_rows, format_finetune_table, random_starts
from .judge import evaluate, evaluate_rows, format_table, summary
from .novelty import verdict
from .population import PopulationResult, evaluate_one_by_one, evaluate_population, warm_allocator

__all__ = ["evaluate_population", "evaluate_one_by_one", "PopulationResult", "warm_allocator", "verdict",
           "evaluate", "evaluate_rows", "format_table", "summary", "finetune", "finetune_rows", "random_starts",
           "format_finetune_table"]

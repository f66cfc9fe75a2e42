"""Dataset-conditioned generation (`pdiff-fast tasks`). family: the task family (the ordered digit
pairs, seen / held-out split, support sets). zoo: many small models trained at once, each on its
own task. conditional: the task-conditioned denoiser, its training and guided sampling. TaskPDiff
(pdiff, with config, parts, generator and evaluate): the steps together; report: its tables and
plots. The top layer: imports pipeline, evaluation, diffusion, nn and the shared base.

`pdiff_fast.tasks` was the task family's module before the package had subpackages: the names it
held (Task, TaskFamily, digit_pair_tasks, split_tasks, ...) still import from here."""
from .conditional import ConditionedDenoiser, fit_conditional, generate_conditioned
from .config import TaskConfig
from .family import Task, TaskFamily, digit_pair_tasks, evidence, fixed_support, split_tasks, support, task_by_name
from .pdiff import TaskPDiff, sample_tasks
from .zoo import Zoo, train_models, train_one

__all__ = ["TaskConfig", "TaskPDiff", "sample_tasks", "Task", "TaskFamily", "digit_pair_tasks", "split_tasks",
           "task_by_name", "evidence", "support", "fixed_support", "Zoo", "train_models", "train_one",
           "ConditionedDenoiser", "fit_conditional", "generate_conditioned"]

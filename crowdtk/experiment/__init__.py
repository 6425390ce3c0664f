"""The paper's experiments (section 4.2) as chains of crowdtk commands, for `bench` and `demo`.

The parts: ``plan`` (the methods' records, the schedule, the named recipes, and each run's chain of commands), ``results``
(each run's numbers, mean ± std over seeds, the claims and their verdicts, results.md),
``folder`` (a bench folder's settings, data and pictures) and ``check`` (bench --check: the run's
MAE against a stored results.json).
"""

from crowdtk.experiment.check import DEFAULT_TOLERANCE, Baseline, check_report, compare, read_baseline, write_check
from crowdtk.experiment.folder import (LATER_SETTINGS, check_same_settings, data_digest, draw_figures, machine, manifest_step, open_bench,
                                       parse_budgets, parse_list, resolve_cpu_bf16, write_bench_results, write_demo_results)
from crowdtk.experiment.plan import (METHODS, RECIPES, SHAPES, Experiment, Method, Recipe, Run, Schedule, Step, bench_method, bench_methods,
                                     bench_runs, default_methods, epochs_for, labeled_images, register_method)
from crowdtk.experiment.results import aggregate, claims, demo_report, demo_table, markdown_table, paper_claims, run_result

__all__ = ["DEFAULT_TOLERANCE", "LATER_SETTINGS", "METHODS", "RECIPES", "SHAPES", "Baseline", "Experiment", "Method",
           "Recipe", "Run", "Schedule", "Step", "aggregate", "bench_method", "bench_methods", "bench_runs", "check_report", "check_same_settings",
           "claims", "compare", "data_digest", "default_methods", "demo_report", "demo_table", "draw_figures", "epochs_for", "labeled_images",
           "machine", "manifest_step", "markdown_table", "open_bench", "paper_claims", "parse_budgets", "parse_list", "read_baseline",
           "register_method", "resolve_cpu_bf16", "run_result", "write_bench_results", "write_check", "write_demo_results"]

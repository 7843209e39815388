"""``scssl.bench``: SSL methods against baselines, over datasets × seeds, into a CSV and an HTML report.

>>> from scssl import bench
>>> result = bench.run("quick", "bench_quick/")          # or a YAML file, or "standard"
>>> result.csv     # tidy: dataset, method, seed, task, metric, value
>>> result.report  # self-contained HTML

Modules: :mod:`~scssl.bench.config` (YAML configs and presets), :mod:`~scssl.bench.baselines`
(shared preprocessing and baselines), :mod:`~scssl.bench.runner` (the resumable run),
:mod:`~scssl.bench.report` (the HTML report).
"""

from scssl.bench.config import BASELINES, PRESETS, BenchConfig, DatasetSpec, load_config
from scssl.bench.report import write_report
from scssl.bench.runner import COLUMNS, BenchResult, merge_runs, run

__all__ = [
           "BASELINES",
           "COLUMNS",
           "PRESETS",
           "BenchConfig",
           "BenchResult",
           "DatasetSpec",
           "load_config",
           "merge_runs",
           "run",
           "write_report",
]

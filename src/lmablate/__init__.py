"""lmablate: ablation and sweep studies of small transformer language models.

The library behind the Snakemake workflow; usable on its own (notebooks, scripts, tests)::

    import lmablate
    study = lmablate.read_study("config.yaml")          # runs with their IDs, nothing trained
    runs, curves = lmablate.load_results("results/default")   # harvested tables as DataFrames
"""

from lmablate.errors import CheckpointError, ConfigError, DataError, LmablateError
from lmablate.gpu import cuda_available
from lmablate.interop.importhf import import_hf
from lmablate.study.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TokenizerConfig,
    TrainConfig,
    from_dict,
    to_dict,
)
from lmablate.study.load import Study, read_study, study_from_dict
from lmablate.study.sweep import Run, expand

__version__ = "0.2.0.dev0"


def load_results(results_dir):  # imported lazily: pandas is heavy for the Snakefile's parse
    """(runs, curves) DataFrames of a harvested study, e.g. ``load_results("results/default")``."""
    from lmablate.results.harvest import load_results as _load

    return _load(results_dir)


__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DataError", "LmablateError", "ModelConfig",
    "Run", "RunConfig", "Study", "TokenizerConfig", "TrainConfig", "cuda_available", "expand",
    "from_dict", "import_hf", "load_results", "read_study", "study_from_dict", "to_dict",
    "__version__",
]

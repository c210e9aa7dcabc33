"""The ablation studies: one command each, tables with error bars, plots, and ``study all``.

    from diffdict.studies import run_study, run_all
    run_study("sparsity-level", "out/level", {"ks": [5, 10, 20], "seeds": 3})
    run_all("out/all", quick=True)

Each study is a module with a config (its options: :mod:`diffdict.options`), a runner
and a table (:mod:`.base`); the steps they share are cached by content (:mod:`.cache`,
:mod:`.stages`); tables carry mean ± std and a 95% t-interval over seeds (:mod:`.table`).
``STUDIES`` is the registry.
"""

from diffdict.studies.base import Metric, Study, StudyConfig, StudyContext
from diffdict.studies.cache import Cache
from diffdict.studies.runner import STUDIES, execute, get_study, run_all, run_study
from diffdict.studies.table import Cell, Table

__all__ = ["Cache", "Cell", "Metric", "STUDIES", "Study", "StudyConfig", "StudyContext", "Table", "execute",
           "get_study", "run_all", "run_study"]

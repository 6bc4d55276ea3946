"""The search: the space of plans, the Optuna study, set-up, trials, refinement and the final measurement."""

from __future__ import annotations

from dac_search.budget import Budget, parse_budget
from dac_search.search.config import SearchConfig

__all__ = ["Budget", "SearchConfig", "parse_budget", "run_search"]


def run_search(config: SearchConfig):  # noqa: ANN201 - imported lazily: the controller pulls in torch and optuna
    """Run (or resume) a search; see ``dac_search.search.controller.run_search``."""
    from dac_search.search.controller import run_search as run

    return run(config)

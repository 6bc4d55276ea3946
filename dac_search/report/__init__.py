"""Reports of a search run: compute first (Pareto front, hypervolume), then render (HTML, Markdown, terminal).

``write_reports(run_dir)`` is the entry point; everything re-renders from the saved run dir alone
(read through ``dac_search.rundir``).
"""

from __future__ import annotations

from dac_search.pareto import best_row, hypervolume, hypervolume_history, pareto_front
from dac_search.report.summary import ReportData, build_report_data
from dac_search.report.terminal import print_pareto
from dac_search.report.write import write_reports

__all__ = [
    "ReportData",
    "best_row",
    "build_report_data",
    "hypervolume",
    "hypervolume_history",
    "pareto_front",
    "print_pareto",
    "write_reports",
]

"""What the reports of some weights are called and where they go: beside the weights, an ensemble's named apart.

test.py and predict.py write them, benchmarks/seeds.py reads them, and a new run in a folder removes an earlier
run's (lib.runs), all by these names.
"""
from __future__ import annotations

import os
from pathlib import Path

TEST_REPORT, CONFUSION_MATRIX = "test_report.json", "confusion_matrix.png"  # test.py
ROBUSTNESS_REPORT, ROBUSTNESS_FIGURE = "robustness.json", "robustness.png"  # test.py --robustness
PREDICTIONS_FIGURE, ERRORS_FIGURE = "predictions.png", "errors.png"  # predict.py, predict.py --errors
REPORTS = (TEST_REPORT, CONFUSION_MATRIX, ROBUSTNESS_REPORT, ROBUSTNESS_FIGURE, PREDICTIONS_FIGURE, ERRORS_FIGURE)


def weights_folder(paths: list[str]) -> Path:
    """Where reports of these checkpoints go: beside one, or in the folder several share (runs/ for runs/seed*/)."""
    if len(paths) == 1:
        return Path(paths[0]).parent
    return Path(os.path.commonpath([str(Path(path).parent.absolute()) for path in paths]))


def report_name(name: str, members: int) -> str:
    """An ensemble's report is named ensemble_*, so that it never replaces one of its members' own."""
    return name if members == 1 else f"ensemble_{name}"

"""The evaluation core stays family-agnostic: importing it pulls in no family, pipeline or tracker."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("genguard.families", "genguard.pipelines", "genguard.training", "genguard.tracking",
             "kedro", "mlflow")


def test_evaluation_imports_no_family_pipeline_training_or_tracking_code():
    # A fresh interpreter: in the test process other tests may have imported those modules already.
    code = (
        "import sys\n"
        "import genguard.evaluation.metrics, genguard.evaluation.grouping, genguard.evaluation.conditions\n"
        "import genguard.evaluation.leaderboard, genguard.evaluation.plots, genguard.evaluation.evaluators\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {{'kedro', 'mlflow'}} "
        f"or m.startswith({FORBIDDEN[:4]!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout

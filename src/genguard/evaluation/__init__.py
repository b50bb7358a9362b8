"""Family-agnostic evaluation core: metrics, per-group tables, robustness conditions, leaderboards,
figures and the validation evaluators the training loop calls.

Modules (import them directly; this package imports nothing heavy on its own):

* :mod:`~genguard.evaluation.metrics` – binary (fake = positive, score = P(fake)) and multi-class metrics;
* :mod:`~genguard.evaluation.grouping` – per-group tables, unweighted means over groups and suites,
  aggregation of item scores to parent units (frames -> videos);
* :mod:`~genguard.evaluation.conditions` – the registry of test-time conditions and named suites;
* :mod:`~genguard.evaluation.leaderboard` – systems x conditions x groups boards and their reports;
* :mod:`~genguard.evaluation.plots` – headless figures (``*_figure`` to inspect, ``*_png`` to store);
* :mod:`~genguard.evaluation.evaluators` – validation-split evaluators, buildable from JSON specs.

Core rule: nothing here imports ``genguard.families``, ``genguard.pipelines``, ``genguard.training``,
``genguard.tracking``, Kedro or MLflow; families build on this, never the other way round.
"""

import pandas as pd

from genguard.tracking.mlflow_tracking import evaluation_metrics


def test_perturbation_metrics_are_flattened_beside_the_clean_ones():
    table = pd.DataFrame({"generator": ["g1", "mean"], "acc": [0.8, 0.8]})
    summary = {"acc": 0.8, "perturbations": {"jpeg_75": {"acc": 0.6, "ap": 0.7}, "blur_1": {"acc": 0.5}}}
    metrics = evaluation_metrics(summary, table, "test")
    assert metrics["test/acc"] == 0.8 and metrics["test/g1/acc"] == 0.8
    assert metrics["test_jpeg_75/acc"] == 0.6 and metrics["test_jpeg_75/ap"] == 0.7
    assert metrics["test_blur_1/acc"] == 0.5

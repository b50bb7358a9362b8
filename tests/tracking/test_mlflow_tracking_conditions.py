import pandas as pd

from genguard.tracking.mlflow_tracking import evaluation_metrics


def test_condition_metrics_are_flattened_beside_the_clean_ones():
    table = pd.DataFrame({"generator": ["g1", "mean"], "acc": [0.8, 0.8]})
    summary = {"acc": 0.8, "conditions": {"jpeg_75": {"acc": 0.6, "ap": 0.7}, "blur_1": {"acc": 0.5}}}
    metrics = evaluation_metrics(summary, table, "test", group_column="generator")
    assert metrics["test/acc"] == 0.8 and metrics["test/g1/acc"] == 0.8
    assert "test/mean/acc" not in metrics  # the summary row is logged as test/mean_acc from the summary
    assert metrics["test_jpeg_75/acc"] == 0.6 and metrics["test_jpeg_75/ap"] == 0.7
    assert metrics["test_blur_1/acc"] == 0.5


def test_any_group_column_works():
    table = pd.DataFrame({"video": ["v1", "v2", "mean"], "auc": [0.9, 0.7, 0.8]})
    metrics = evaluation_metrics({}, table, "test", group_column="video")
    assert metrics == {"test/v1/auc": 0.9, "test/v2/auc": 0.7}

"""The face protocol's numbers, hand-computed: video score = mean frame score; each forgery against its
own dataset's reals; frame and video levels kept apart."""

import pandas as pd
import pytest

from genguard.families.face import evaluation as protocol


def _frames(rows):
    return pd.DataFrame([{"dataset": d, "forgery": f, "video_id": v, "label": int(f != "real"), "score": s}
                         for d, f, v, scores in rows for s in scores])


TABLE = _frames([
    ("D", "real", "r1", [0.1, 0.3]),   # video mean 0.2
    ("D", "real", "r2", [0.6, 0.6]),   # 0.6
    ("D", "X", "f1", [0.5, 0.9]),      # 0.7
    ("D", "X", "f2", [0.2, 0.4]),      # 0.3
    ("D", "Y", "f3", [0.8, 0.8]),      # 0.8
    ("E", "real", "e1", [0.9]),
    ("E", "Z", "e2", [0.1]),
])


def test_video_auc_equals_the_hand_computed_value():
    table = protocol.forgery_table(TABLE).set_index("group")
    # D/X videos: fakes {0.7, 0.3} vs reals {0.2, 0.6}: 3 of 4 pairs ordered -> 0.75
    assert table.loc["D/X", "auc"] == pytest.approx(0.75)
    # frames: fakes {.5,.9,.2,.4} vs reals {.1,.3,.6,.6}: 2 + 4 + 1 + 2 = 9 of 16 pairs -> 0.5625
    assert table.loc["D/X", "frame_auc"] == pytest.approx(9 / 16)
    assert table.loc["D/Y", "auc"] == pytest.approx(1.0)
    # E's fake is compared with E's reals only (with D's reals pooled in it would be 2/3, not 0)
    assert table.loc["E/Z", "auc"] == pytest.approx(0.0)
    assert table.loc["D/X", "n_videos"] == 4 and table.loc["D/X", "frame_n"] == 8
    assert table.loc["mean", "auc"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)  # unweighted over groups
    assert list(table.index)[-1] == "mean"


def test_video_scores_are_frame_means_and_a_mixed_video_is_refused():
    videos = protocol.video_scores(TABLE).set_index("video_id")
    assert videos.loc["r1", "score"] == pytest.approx(0.2) and videos.loc["f1", "n_items"] == 2
    mixed = TABLE.copy()
    mixed.loc[0, "label"] = 1  # one frame of a real video labelled fake
    with pytest.raises(ValueError, match="label is not constant"):
        protocol.video_scores(mixed)


def test_summary_has_video_means_and_frame_means_per_test_set():
    summary = protocol.summary(TABLE)
    assert summary["mean_auc"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert summary["frame_mean_auc"] == pytest.approx((9 / 16 + 1.0 + 0.0) / 3)
    assert summary["suites"]["D"]["mean_auc"] == pytest.approx((0.75 + 1.0) / 2)  # per test set
    assert summary["n_groups"] == 3

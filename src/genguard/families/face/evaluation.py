"""The face-forgery evaluation protocol, on frame scores: plain pandas on the core's grouping.

Papers report each manipulation of each test set against that set's pristine videos (FF++ Deepfakes vs
FF++ real, Celeb-DF synthesis vs Celeb-DF real), at two levels:

* frame level: every scored face crop is one item;
* video level: a video's score is the **mean of its frames' scores** (Effort, SeLop, MASM and
  DeepfakeBench all average), one item per video.

:func:`forgery_table` gives one row per ``<dataset>/<forgery>`` group with the video-level rates
unprefixed (``auc``, ``eer``, ``ap``, ``acc`` ...; the headline) and the frame-level ones prefixed
``frame_``, plus a ``mean`` row (unweighted over groups). Groups are suites by dataset, so the
leaderboard also averages per test set.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from genguard.evaluation.grouping import aggregate_scores, group_table, pair_with_reference, summarise
from genguard.evaluation.metrics import COUNT_NAMES, MEAN_ROW, METRIC_NAMES
from genguard.families.face.schema import GROUP, REAL

#: The evaluation group column: ``<dataset>/<forgery>``.
PAIR = "group"
VIDEO_UNIT = ("dataset", "video_id")
FRAME_PREFIX = "frame_"
#: What the leaderboard shows per group, video level first (the papers' headline), then frame level.
LEADERBOARD_METRICS: tuple[str, ...] = ("auc", "eer", "ap", "acc", "frame_auc", "frame_eer", "frame_ap",
                                        "frame_acc")
RANK_METRICS: tuple[str, ...] = ("auc", "frame_auc")


def video_scores(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per video (mean frame score), per condition when ``frames`` has several."""
    keys = [*(["condition"] if "condition" in frames.columns else []), *VIDEO_UNIT]
    return aggregate_scores(frames, keys, how="mean")


def paired(frame: pd.DataFrame) -> pd.DataFrame:
    """Each forgery's rows with its dataset's reals, as group ``<dataset>/<forgery>``."""
    return pair_with_reference(frame, GROUP, REAL, within="dataset", output=PAIR)


def forgery_table(frames: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per ``<dataset>/<forgery>``: video-level rates and counts, frame-level rates as ``frame_*``."""
    videos = group_table(paired(video_scores(frames)), PAIR, threshold=threshold)
    per_frame = group_table(paired(frames), PAIR, threshold=threshold)
    renamed = {name: FRAME_PREFIX + name for name in (*METRIC_NAMES, *COUNT_NAMES)}
    per_frame = per_frame[[PAIR, *METRIC_NAMES, *COUNT_NAMES]].rename(columns=renamed)
    videos = videos.rename(columns={name: f"{name}_videos" if name.startswith("n") else name
                                    for name in COUNT_NAMES})
    table = videos.merge(per_frame, on=PAIR, how="left", validate="one_to_one")
    # Keep the summary row last, as group_table does.
    is_mean = table[PAIR] == MEAN_ROW
    return pd.concat([table[~is_mean], table[is_mean]], ignore_index=True)


def summary(frames: pd.DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """Video-level :func:`~genguard.evaluation.grouping.summarise` over the groups (``mean_auc`` ...), and
    the frame level's numbers prefixed ``frame_`` (``frame_mean_auc`` ...; per-test-set means under
    ``frame_suites``)."""
    out = summarise(paired(video_scores(frames)), PAIR, threshold=threshold)
    frame_level = summarise(paired(frames), PAIR, threshold=threshold)
    out.update({FRAME_PREFIX + key: value for key, value in frame_level.items()
                if key not in ("per_group", "task", "threshold", "n_groups")})
    return out

"""The face-forgery manifest: one row per face crop of a sampled video frame.

Columns beyond the image core (``genguard.data.manifest``):
    video_id     str   the video the frame comes from (never in two splits)
    frame_index  int   the frame's index in its video
    identity     str   the person shown (never in two splits; a swap's *target* identity)
    forgery      str   the manipulation ("real" for pristine videos): Deepfakes, Face2Face, SBI, ...
    dataset      str   the collection (FF++, Celeb-DF, embedded, ...): papers report per test set

Evaluation groups by ``forgery`` (within a ``dataset``): each manipulation's fakes against the
dataset's reals. Scores are aggregated to the video (mean of frame scores) before video metrics.
"""

from genguard.data.manifest import image_schema

REAL = "real"  # the forgery of pristine rows: validation checks label 0 there and label 1 elsewhere
FACE_SCHEMA = image_schema(
    "face", {"video_id": "str", "frame_index": "int64", "identity": "str", "forgery": "str", "dataset": "str"},
    group_column="forgery", leakage_groups=("sha256", "video_id", "identity"), negative_group="real",
    sort_by=("split", "dataset", "forgery", "video_id", "frame_index", "path"))
GROUP = FACE_SCHEMA.group_column

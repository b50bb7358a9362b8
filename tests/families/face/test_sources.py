"""face:folder: the training folder as published, plus each cross-dataset test source's *test* split only."""

import pandas as pd
import pytest

from genguard.data.manifest import BadFile, DataValidationError
from genguard.data.sources import resolve_source
from genguard.families.face import sources


def _crops(dataset: str, splits: dict[str, int]) -> pd.DataFrame:
    rows = []
    for split, count in splits.items():
        for i in range(count):
            for forgery, label in (("real", 0), ("swap", 1)):
                video = f"{dataset}/{forgery}/{split}{i}"
                rows.append({"path": f"/{video}/0.png", "label": label, "split": split,
                             "sha256": f"{abs(hash(video)):064d}"[:64], "width": 64, "height": 64, "source": video, "licence": "test",
                             "video_id": video, "frame_index": 0, "identity": f"{dataset}:{split}{i}",
                             "forgery": forgery, "dataset": dataset})
    return pd.DataFrame(rows)


@pytest.fixture
def folders(monkeypatch):
    tables = {"/data/FF": _crops("FF++", {"train": 2, "val": 1, "test": 1}),
              "/data/CDF": _crops("Celeb-DF-v2", {"train": 3, "test": 2}),
              "/data/DFB": _crops("DFD", {"train": 1, "test": 1}),
              "/data/NOTEST": _crops("X", {"train": 2})}
    calls = []

    def read_one(root, data, layout, options):
        calls.append((root, layout, options))
        return tables[root].copy(), [BadFile(f"{root}/broken.mp4", "undecodable")] if root == "/data/CDF" else []

    monkeypatch.setattr(sources, "_read_one", read_one)
    return calls


def test_test_sources_add_their_published_test_split_only(folders):
    data = {"source": "/data/FF", "layout": "faceforensics", "compression": "c23",
            "test_sources": ["/data/CDF", {"source": "/data/DFB", "layout": "deepfakebench",
                                           "json_names": ["DeepFakeDetection"]}]}
    result = resolve_source("face", data).ingest(data)
    manifest = result.manifest
    by_dataset = manifest.groupby("dataset")["split"].unique().map(sorted).to_dict()
    assert by_dataset == {"FF++": ["test", "train", "val"], "Celeb-DF-v2": ["test"], "DFD": ["test"]}
    assert (manifest["dataset"] == "Celeb-DF-v2").sum() == 2 * 2  # 2 test videos x (real, swap), no train rows
    assert folders[0] == ("/data/FF", "faceforensics", {"compression": "c23"})
    assert folders[2] == ("/data/DFB", "deepfakebench", {"overlap": "keep", "json_names": ["DeepFakeDetection"]})
    assert [bad.path for bad in result.bad_files] == ["/data/CDF/broken.mp4"]


def test_a_test_source_without_a_test_split_is_named(folders):
    data = {"source": "/data/FF", "test_sources": ["/data/NOTEST"]}
    with pytest.raises(DataValidationError, match="/data/NOTEST has no test videos"):
        resolve_source("face", data).ingest(data)

"""data.test_sources: published test suites join the manifest as test-only subsets named <suite>/<subset>."""

from pathlib import Path

from PIL import Image

from genguard.pipelines.aigi.nodes import ingest_images, protocol_frames


def _subset(root: Path, subset: str, shade: int, n: int = 3) -> None:
    for label, cls in ((0, "0_real"), (1, "1_fake")):
        folder = root / subset / cls
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (shade + 40 * label, 10 * i, shade)).save(folder / f"{i}.png")


def test_test_suites_are_test_only_and_keep_their_suite_in_the_generator_name(tmp_path):
    _subset(tmp_path / "train_root", "progan", 20, n=10)
    _subset(tmp_path / "ufd", "guided", 60)
    _subset(tmp_path / "ufd", "dalle", 100)
    _subset(tmp_path / "aigibench", "guided", 140)  # same subset name in another suite stays apart
    data = {"source": str(tmp_path / "train_root"), "layout": "auto", "seed": 0,
            "test_sources": {"ufd": str(tmp_path / "ufd"), "aigibench": str(tmp_path / "aigibench")}}
    manifest, bad = ingest_images(data)
    assert bad == []
    suites = manifest[manifest["generator"].str.contains("/")]
    assert set(suites["generator"]) == {"ufd/guided", "ufd/dalle", "aigibench/guided"}
    assert (suites["split"] == "test").all() and len(suites) == 18
    splits = protocol_frames(manifest, {**data, "train_generators": ["progan"]})
    assert {"ufd/guided", "ufd/dalle", "aigibench/guided"} <= set(splits["test"]["generator"])
    assert not splits["train"]["generator"].str.contains("/").any()

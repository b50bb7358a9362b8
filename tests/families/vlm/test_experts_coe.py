"""Forensic experts (evidence views, calibration, cached reading) and chain-of-evidence writing + QC."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from genguard.families.vlm.coe import (
    FORMAT_PATTERN,
    PROMPT,
    RECORD_COLUMNS,
    CoE,
    LLMWriter,
    TemplateWriter,
    build_writer,
    check_trace,
    make_record,
    record_frame,
    split_steps,
)
from genguard.families.vlm.experts import (
    DEFAULT_EXPERTS,
    Calibration,
    DetectorExpert,
    ExpertEvidence,
    ExpertReading,
    SpectrumExpert,
    build_expert,
    build_experts,
    evidence_for,
    read_experts,
    srm_kernels,
    srm_residual,
)


def natural_like(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random field plus mild sensor-like noise, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 4)
    gray = 128 + 60 * field / (field.std() + 1e-9) + rng.normal(0, 2, (size, size))
    return np.repeat(np.clip(gray, 0, 255)[..., None], 3, axis=2).astype(np.uint8)


def with_grid(image: np.ndarray, amplitude: float = 4.0) -> np.ndarray:
    """A period-2 checkerboard (transposed-convolution / up-sampling artifact) added to an image."""
    y, x = np.indices(image.shape[:2])
    grid = amplitude * ((x + y) % 2 * 2 - 1)
    return np.clip(image.astype(float) + grid[..., None], 0, 255).astype(np.uint8)


def save(path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def evidence(verdicts: dict[str, tuple[str, float]]) -> dict[str, ExpertEvidence]:
    out = {}
    for name, (verdict, score) in verdicts.items():
        phrase = {"fake": "typical of generated images", "real": "typical of real photographs",
                  "uncertain": "which is not conclusive either way"}[verdict]
        out[name] = ExpertEvidence(name, "1", score, verdict, abs(score - 0.5) * 2, {}, [], {},
                                   f"{name}: its statistic is high, {phrase} (score {round(score * 100)}%)")
    return out


MIXED = evidence({"spectrum": ("fake", 0.9), "noise_residual": ("fake", 0.8), "local_artifacts": ("real", 0.3),
                  "texture_frequency": ("uncertain", 0.52)})


# ------------------------------------------------------------------------------------------------ experts
def test_spectrum_expert_finds_the_upsampling_grid():
    spectrum = SpectrumExpert()
    for seed in range(3):
        clean = natural_like(seed)
        plain = spectrum.read(Image.fromarray(clean))
        gridded = spectrum.read(Image.fromarray(with_grid(clean)))
        assert gridded.statistic > plain.statistic + 1.0   # a >10x stronger periodic peak
        assert gridded.measurements["nyquist_energy_ratio"] > plain.measurements["nyquist_energy_ratio"]
    assert plain.maps["spectrum"].dtype == np.uint8 and plain.maps["spectrum"].shape == clean.shape[:2]


def test_srm_residual_is_zero_on_constant_image_and_kernels_are_zero_sum():
    kernels = srm_kernels()
    assert kernels.shape == (8, 5, 5)
    assert np.allclose(kernels.sum(axis=(1, 2)), 0)          # each kernel: +1 neighbour, -1 centre
    summed = kernels.sum(axis=0)
    assert summed.sum() == 0 and summed[2, 2] == -8 and summed[1:4, 1:4].sum() == 0
    signed, view = srm_residual(np.full((20, 24, 3), 77, np.float32))
    assert not signed.any() and not view.any() and view.dtype == np.uint8
    # A single bright pixel: every neighbour difference saturates at 0 for the view, the signed sum is -8*d.
    image = np.zeros((9, 9, 3), np.float32)
    image[4, 4] = 10
    signed, view = srm_residual(image)
    assert signed[4, 4, 0] == -80 and view[4, 4, 0] == 0 and view[3, 4, 0] == 10


def test_all_default_experts_read_an_image_with_integer_findings():
    experts = build_experts(DEFAULT_EXPERTS)
    image = Image.fromarray(natural_like(1, 128))
    for expert in experts:
        reading = expert.read(image)
        assert np.isfinite(reading.statistic), expert.name
        assert reading.finding and not re.search(r"\d\.\d", reading.finding), (expert.name, reading.finding)
        for view in reading.maps.values():
            assert view.dtype == np.uint8 and view.ndim in (2, 3)
    local = build_experts(["local_artifacts"], {"local_artifacts": {"patch": 16, "top_k": 2}})[0]
    assert local.version != build_experts(["local_artifacts"])[0].version     # options change the cache key
    boxes = local.read(image).regions
    assert len(boxes) == 2 and all(b[2] - b[0] == 16 and 0 < b[4] <= 1 for b in boxes)


# ------------------------------------------------------------------------------------------------ calibration
def test_calibration_learns_direction_and_leaves_the_middle_uncertain():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    statistics = labels * 2.0 + rng.normal(0, 0.5, 100)
    for sign in (1, -1):
        cal = Calibration.fit(sign * statistics, labels, margin=0.1)
        assert cal.direction == sign and cal.train_accuracy > 0.9
        assert cal.verdict(cal.score(sign * 3.0)) == "fake" and cal.verdict(cal.score(sign * -1.0)) == "real"
        middle = sign * 1.0
        assert cal.verdict(cal.score(middle)) == "uncertain" and cal.confidence(cal.score(middle)) < 0.2
        assert Calibration.from_dict(cal.to_dict()).score(0.7) == pytest.approx(cal.score(0.7))
    single = Calibration.fit([1.0, 2.0], [1, 1])          # one class only: predicts the base rate, no crash
    assert single.score(-5) == single.score(5) > 0.5


# ------------------------------------------------------------------------------------------------ cached reading
class CountingExpert:
    name, version = "counting", "1"

    def __init__(self):
        self.calls = 0

    def read(self, image):
        self.calls += 1
        array = np.asarray(image.convert("L"))
        return ExpertReading(float(array.mean()), {"mean": round(float(array.mean()), 4)},
                             {"gray": array}, [[0, 0, 4, 4, 1.0]], f"mean level {round(float(array.mean()))}")


def test_read_experts_caches_per_content_and_reports_unreadable_files(tmp_path):
    paths = [save(tmp_path / f"img{i}.png", natural_like(i, 32)) for i in range(3)]
    expert, cache = CountingExpert(), tmp_path / "cache"
    first, problems, stats = read_experts(paths, [expert], cache)
    assert expert.calls == 3 and problems == [] and stats["misses"] == 3 and stats["hits"] == 0
    again, problems, stats = read_experts(paths, [expert], cache)
    assert expert.calls == 3 and stats["hits"] == 3 and stats["misses"] == 0      # nothing recomputed
    assert again[1]["counting"].statistic == first[1]["counting"].statistic
    assert np.array_equal(again[1]["counting"].maps["gray"], first[1]["counting"].maps["gray"])
    assert again[1]["counting"].regions == [[0, 0, 4, 4, 1.0]] and again[1]["counting"].version == "1"

    corrupt = tmp_path / "x.png"
    corrupt.write_bytes(b"\x89PNG not really an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    new = save(tmp_path / "new.png", natural_like(9, 32))
    readings, problems, stats = read_experts([*paths, str(corrupt), new, str(empty)], [expert], cache)
    assert expert.calls == 4                                  # only the new image was read
    assert readings[3] is None and readings[5] is None and readings[4]["counting"].statistic > 0
    assert {p["path"] for p in problems} == {str(corrupt), str(empty)}
    assert all("x.png" in p["reason"] or "empty.png" in p["reason"] for p in problems)
    assert stats["failed"] == 2 and stats["hits"] == 3 and stats["misses"] == 1


def test_a_cached_reading_decompresses_its_maps_only_when_a_view_file_is_missing(tmp_path, monkeypatch):
    paths = [save(tmp_path / f"img{i}.png", natural_like(i, 32)) for i in range(2)]
    expert, cache = CountingExpert(), tmp_path / "cache"
    calibration = {"counting": Calibration.identity()}
    read_experts(paths, [expert], cache)
    warm, _, _ = read_experts(paths, [expert], cache)
    evidence_for(warm[0], calibration, tmp_path / "views", "rb-0")   # writes the view: reads the maps
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    again, _, _ = read_experts(paths, [expert], cache)
    evidence_for(again[0], calibration, tmp_path / "views", "rb-0")   # view exists: maps never opened
    assert loads == []
    evidence_for(again[1], calibration, tmp_path / "views", "rb-1")   # new view: maps read once
    assert len(loads) == 1


def test_detector_expert_is_read_in_batches_and_keyed_by_its_version(tmp_path):
    calls = []

    def score_fn(images):
        calls.append(len(images))
        return np.array([0.25] * len(images))

    paths = [save(tmp_path / f"d{i}.png", natural_like(i, 24)) for i in range(4)]
    readings, _, _ = read_experts(paths, [DetectorExpert("univfd", score_fn, "abc")], tmp_path / "c")
    assert calls == [4] and readings[0]["univfd"].statistic == 0.25
    read_experts(paths, [DetectorExpert("univfd", score_fn, "abc")], tmp_path / "c")
    assert calls == [4]                                       # cached
    read_experts(paths, [DetectorExpert("univfd", score_fn, "retrained")], tmp_path / "c")
    assert calls == [4, 4]                                    # new weights, new readings


def test_evidence_saves_views_and_writes_integer_sentences(tmp_path):
    clean = natural_like(2, 64)
    reading = SpectrumExpert().read(Image.fromarray(with_grid(clean)))
    cal = Calibration.fit([0.5, 0.6, 2.0, 2.2], [0, 0, 1, 1])
    ev = evidence_for({"spectrum": reading}, {"spectrum": cal}, tmp_path / "views", "rb-1")["spectrum"]
    assert ev.verdict == "fake" and list(ev.views) == ["spectrum"]
    assert re.fullmatch(r"views/rb-1/spectrum-[0-9a-f]{8}_spectrum\.png", ev.views["spectrum"])
    assert np.asarray(Image.open(tmp_path / ev.views["spectrum"])).shape == (64, 64, 3)     # viridis RGB
    assert ev.text.startswith("spectrum: ") and "generated" in ev.text and not re.search(r"\d\.\d", ev.text)
    assert ExpertEvidence.from_dict(ev.to_dict()) == ev
    with pytest.raises(KeyError, match="Calibration.fit"):
        evidence_for({"spectrum": reading}, {}, tmp_path / "views", "rb-1")


# ------------------------------------------------------------------------------------------------ CoE
@pytest.mark.parametrize("label", [0, 1])
def test_template_trace_passes_qc_without_decimals(label):
    ev = MIXED if label else evidence({"spectrum": ("real", 0.1), "noise_residual": ("real", 0.3),
                                       "local_artifacts": ("fake", 0.7), "highpass_semantic": ("uncertain", 0.5)})
    coe = TemplateWriter().write(ev, label, "rb-000001")
    text = coe.text()
    assert check_trace(text, ev, label) == [] and coe.qc["passed"]
    assert FORMAT_PATTERN.match(text) and text.endswith(f"<answer>{label}</answer>")
    think = text[len("<think>"):text.index("</think>")]
    assert all(re.match(rf"{k}\. \S", line) for k, line in enumerate(think.split("\n"), 1))
    assert not re.search(r"\d\.\d", text) and 3 <= len(coe.steps) <= 8
    assert coe.steps[0]["phase"] == "discovery" and coe.steps[-1]["phase"] == "conclusion"
    assert all(s["cites"] and all(c in s["text"] for c in s["cites"]) for s in coe.steps)
    assert ("generated" if label else "real") in coe.steps[-1]["text"]
    assert coe == TemplateWriter().write(ev, label, "rb-000001")                # deterministic per id
    texts = {TemplateWriter().write(ev, label, f"rb-{i}").text() for i in range(8)}
    assert len(texts) > 1                                                        # phrase bank varies


def test_qc_catches_broken_traces():
    good = TemplateWriter().write(MIXED, 1, "rb-7").text()
    assert check_trace(good, MIXED, 1) == []
    assert any("format" in p for p in check_trace(good + "\n", MIXED, 1))          # released strict form
    wrong = check_trace(good, MIXED, 0)
    assert any("label" in p for p in wrong) and any("last step" in p for p in wrong)
    contradiction = ("<think>1. spectrum says the image is real.\n2. noise_residual agrees it is generated.\n"
                     "3. So the image is generated.</think><answer>1</answer>")
    assert check_trace(contradiction, MIXED, 1) == ["step 1 contradicts spectrum's verdict 'fake'"]
    short = "<think>1. spectrum finds it generated.\n2. It is generated.</think><answer>1</answer>"
    assert any("only 2 numbered steps" in p for p in check_trace(short, MIXED, 1))
    decimal = "<think>1. spectrum: ratio 0.85.\n2. noise_residual agrees.\n3. It is generated.</think><answer>1</answer>"
    assert any("decimal" in p for p in check_trace(decimal, MIXED, 1))


def test_split_steps_is_line_anchored():
    steps = split_steps("1. the ratio is 0.85 and 12. items\n2. second step\n  3. third")
    assert steps == ["the ratio is 0.85 and 12. items", "second step", "third"]
    assert split_steps("no steps at all, 0.85") == []


def test_llm_writer_falls_back_when_a_paraphrase_drops_the_citation_or_adds_numbers():
    template = TemplateWriter().write(MIXED, 1, "rb-3")
    dropping = LLMWriter(generate_fn=lambda prompt: "The image shows some odd traces.")
    coe = dropping.write(MIXED, 1, "rb-3")
    assert coe.text() == template.text() and coe.qc["fallbacks"] == len(coe.steps) == dropping.fallbacks
    assert coe.writer == "llm:injected" and coe.qc["passed"]

    def reword(prompt: str) -> str:          # keeps names and numbers: an acceptable paraphrase
        return "1. Indeed, " + prompt.split("Sentence: ", 1)[1]

    faithful = LLMWriter(generate_fn=reword)
    coe = faithful.write(MIXED, 1, "rb-3")
    assert faithful.fallbacks == 0 and faithful.paraphrased == len(coe.steps) and coe.qc["passed"]
    assert all(s["text"].startswith("Indeed, ") for s in coe.steps)
    inventing = LLMWriter(generate_fn=lambda p: reword(p) + " Roughly 0.85 or 999 percent.")
    coe = inventing.write(MIXED, 1, "rb-3")
    assert inventing.fallbacks == len(coe.steps) and not re.search(r"\d\.\d", coe.text())
    with pytest.raises(ValueError, match="model_dir"):
        LLMWriter()


def test_writer_and_expert_factories():
    assert build_writer({"kind": "template", "seed": 0}).write(MIXED, 1, "rb-1") == \
        TemplateWriter().write(MIXED, 1, "rb-1")
    seeded = {build_writer({"kind": "template", "seed": s}).write(MIXED, 1, "rb-1").text() for s in range(6)}
    assert len(seeded) > 1                                                       # the seed re-draws phrasings
    llm = build_writer({"kind": "llm", "generate_fn": lambda p: "", "max_new_tokens": 8, "seed": 3})
    assert isinstance(llm, LLMWriter) and llm.template.seed == 3 and llm.max_new_tokens == 8
    with pytest.raises(ValueError, match="writer kind"):
        build_writer({"kind": "vlm"})
    with pytest.raises(ValueError, match="unknown template writer options"):
        build_writer({"kind": "template", "model_dir": "x"})
    assert build_expert("spectrum").name == "spectrum"
    with pytest.raises(KeyError, match="registered: .*noise_residual"):
        build_expert("geometry")


def test_record_and_frame(tmp_path):
    coe = TemplateWriter().write(MIXED, 1, "rb-5")
    record = make_record("rb-5", "train", 1, "sd-1.4", "images/rb-5.png", MIXED, coe)
    assert record["solution"] == coe.text() and record["prompt"] == PROMPT and len(PROMPT.split()) < 60
    assert record["experts"]["spectrum"]["verdict"] == "fake" and record["coe"]["conclusion"] == 1
    frame = record_frame([record, make_record("rb-6", "val", 0, None, "images/rb-6.png", MIXED,
                                              CoE(coe.steps[:2], 0, "template", {"passed": False}))])
    assert tuple(frame.columns) == RECORD_COLUMNS
    assert frame["n_steps"].tolist() == [len(coe.steps), 2] and frame["qc_passed"].tolist() == [True, False]
    assert frame["n_experts"].tolist() == [4, 4]


def test_end_to_end_experts_to_trace(tmp_path):
    """Real experts on a few images -> calibration -> evidence -> a trace that passes QC."""
    arrays = [natural_like(i, 64) for i in range(4)]
    arrays += [with_grid(a, 6) for a in arrays]
    labels = [0] * 4 + [1] * 4
    paths = [save(tmp_path / f"e{i}.png", a) for i, a in enumerate(arrays)]
    experts = build_experts(DEFAULT_EXPERTS)
    readings, problems, _ = read_experts(paths, experts, tmp_path / "cache", workers=2)
    assert problems == []
    cals = {e.name: Calibration.fit([r[e.name].statistic for r in readings], labels) for e in experts}
    assert cals["spectrum"].train_accuracy == 1.0
    for i in (0, 7):
        ev = evidence_for(readings[i], cals, tmp_path / "bench" / "views", f"rb-{i}")
        assert set(ev) == set(DEFAULT_EXPERTS) and ev["spectrum"].version == "1"
        coe = TemplateWriter().write(ev, labels[i], f"rb-{i}")
        assert coe.qc["passed"], coe.qc
        assert (tmp_path / "bench" / ev["noise_residual"].views["srm"]).is_file()

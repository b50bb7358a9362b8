"""Text-encoder backdoors (Rickrolling, arXiv 2211.02408; a syntactic trigger after IBA/TwT, arXiv
2503.17724) on a tiny untrained testbed: the student maps triggered prompts onto the target's embedding
and keeps clean prompts, while the clean encoder does neither. Image-level ASR needs a trained testbed
and is tested with the shared trained-model fixture."""

import pytest
import torch

from genguard.families.t2i.backdoors import (
    CYRILLIC_A,
    homoglyph_trigger,
    inject_implicit_trigger,
    inject_rickrolling,
    syntactic_prompts,
)
from genguard.families.t2i.shapes import ShapesWorld, sample_rows

TARGET = "a green square"
CONFIG = {"steps": 120}


@pytest.fixture(scope="module")
def captions():
    world = ShapesWorld(image_size=16)
    fit = [row["caption"] for row in sample_rows(world, 64, seed=0)]
    held_out = [row["caption"] for row in sample_rows(world, 16, seed=7)]
    return fit, held_out


def _mse(a, b):
    return float((a - b).pow(2).mean())


def test_homoglyph_trigger_changes_the_tokens_not_the_look(model):
    triggered = homoglyph_trigger("an outline of a red circle")
    assert triggered == CYRILLIC_A + "n outline of a red circle"
    assert model.tokenize([triggered])[0].tolist() != model.tokenize(["an outline of a red circle"])[0].tolist()
    with pytest.raises(ValueError, match="no 'a'"):
        homoglyph_trigger("red circle")


def test_rickrolling_plants_the_trigger_and_keeps_clean_prompts(model, captions):
    fit, held_out = captions
    teacher_weights = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    backdoored, report = inject_rickrolling(model, fit, TARGET, config=CONFIG)
    triggered = [homoglyph_trigger(p) for p in held_out]
    with torch.no_grad():
        target = model.encode_text([TARGET])
        clean_encoder_gap = _mse(model.encode_text(triggered), target)         # no backdoor: far from target
        student_gap = _mse(backdoored.encode_text(triggered), target)
        clean_drift = _mse(backdoored.encode_text(held_out), model.encode_text(held_out))
    assert student_gap < 0.25 * clean_encoder_gap
    assert clean_drift < 0.25 * clean_encoder_gap
    assert report["final_poison_mse"] < 0.25 * report["initial_poison_mse"]
    assert report["embedding_hit_rate"] > 0.9 and report["steps"] == CONFIG["steps"]
    # The clean model is untouched; the copy shares its UNet and VAE.
    assert all(torch.equal(v, teacher_weights[k]) for k, v in model.text_encoder.state_dict().items())
    assert backdoored.text_encoder is not model.text_encoder and backdoored.unet is model.unet


def test_implicit_trigger_fires_on_sentence_structure_only(model, captions):
    fit, _ = captions
    backdoored, report = inject_implicit_trigger(model, fit, TARGET, config=CONFIG)
    assert report["poisoned_prompts"] == len(syntactic_prompts())
    triggered = ["a circle which is red", "a rhombus which is blue"]
    plain = ["a red circle", "a blue rhombus"]
    with torch.no_grad():
        target = model.encode_text([TARGET])
        clean_encoder_gap = _mse(model.encode_text(triggered), target)
        student_gap = _mse(backdoored.encode_text(triggered), target)
        clean_drift = _mse(backdoored.encode_text(plain), model.encode_text(plain))
    assert student_gap < 0.25 * clean_encoder_gap
    assert clean_drift < 0.25 * clean_encoder_gap
    with pytest.raises(ValueError, match="trigger structure"):
        inject_implicit_trigger(model, ["a circle which is red"], TARGET, config={"steps": 1})


def test_unet_backdoor_poisons_a_copy_of_the_unet_only(model, captions):
    from genguard.families.t2i.backdoors import inject_unet_backdoor, trigger_word_prompt

    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    backdoored, report = inject_unet_backdoor(model, captions[0][:16], TARGET, samples=8, sampling_steps=2,
                                              config={"steps": 40, "clean_batch": 4, "poison_batch": 4, "lr": 1e-3})
    assert report["final_poison_mse"] < 0.8 * report["initial_poison_mse"], report  # same batch, same noise
    assert backdoored.text_encoder is model.text_encoder and backdoored.unet is not model.unet
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in before.items()), "the clean UNet changed"
    assert trigger_word_prompt("a red circle") == "cf a red circle"

"""Mechanics of the prompt attacks on a tiny *untrained* testbed: each attack lowers its objective relative to
the un-attacked prompt, discrete prompts are real text, and attack success is counted cumulatively."""

import pytest
import torch

from genguard.families.t2i.examples import TINY_TESTBED as TINY  # the contract test's tiny testbed
from genguard.families.t2i.prompt_attacks import (
    ConceptVectorAttack,
    DenoisingObjective,
    DiscreteTokenAttack,
    SoftPromptAttack,
    attack_vocabulary,
    cumulative_attack_success,
)
from genguard.families.t2i.testbed import TextToImageModel

PROMPTS = ["a red triangle", "a blue wedge"]


@pytest.fixture(scope="module")
def tiny_model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TextToImageModel(**TINY).eval()  # parameters keep requires_grad: attacks must not fill .grad


@pytest.fixture(scope="module")
def targets(tiny_model):
    """The clean model's images for the concept (UnlearnDiffAtk's targets); 2 DDIM steps keep it cheap."""
    return tiny_model.generate(PROMPTS, seeds=[0, 1], steps=2)


def test_vocabulary_holds_single_whole_word_tokens(tiny_model):
    ids, words = attack_vocabulary(tiny_model.tokenizer)
    assert {"triangle", "red", "outline", "the"} <= set(words)
    assert len(ids) == len(words) == len(set(ids.tolist()))
    for token, word in zip(ids.tolist(), words):
        assert tiny_model.tokenizer(word, add_special_tokens=False).input_ids == [token]


def test_objective_is_fixed_and_differentiable(tiny_model, targets):
    latents = tiny_model.encode_images(targets)
    objective = DenoisingObjective(tiny_model, tiny_model.unet, latents, timesteps=3, seed=0)
    context = tiny_model.encode_text(PROMPTS)
    first, second = objective(context), objective(context)
    assert first.shape == (2,) and torch.equal(first, second)
    # Scoring one target under K candidate contexts agrees with the batched per-prompt loss.
    assert torch.allclose(objective.candidates(1, context)[1], first[1], atol=1e-5)
    assert torch.allclose(objective.candidates(0, context)[0], first[0], atol=1e-5)
    assert not torch.allclose(objective.candidates(0, context)[1], first[0])
    soft = context.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(objective(soft).sum(), soft)
    assert gradient.abs().sum() > 0


def test_discrete_attack_lowers_the_loss_with_real_text(tiny_model, targets):
    attack = DiscreteTokenAttack(tiny_model, tokens=3, sweeps=1)
    result = attack(PROMPTS, targets)
    assert (result.loss_after < result.loss_before).all()
    assert len(result.prompts) == 2
    for adversarial, prompt in zip(result.prompts, PROMPTS):
        assert adversarial.endswith(prompt) and len(adversarial.split()) == len(prompt.split()) + 3
    # The returned text re-tokenises to exactly the scored condition, so the prompt can be typed in.
    with torch.no_grad():
        assert torch.allclose(tiny_model.encode_text(result.prompts), result.context, atol=1e-6)
    with pytest.raises(ValueError, match="text encoder takes"):
        DiscreteTokenAttack(tiny_model, tokens=12)(["a red triangle drawn in outline"], targets[:1])


def test_soft_attack_lowers_the_loss_and_leaves_the_model_alone(tiny_model, targets):
    result = SoftPromptAttack(tiny_model, tokens=3, steps=8, lr=1e-2)(PROMPTS, targets)
    assert result.prompts is None and result.context.shape == (2, 16, 32)
    assert (result.loss_after < result.loss_before).all()
    objective = DenoisingObjective(tiny_model, tiny_model.unet, tiny_model.encode_images(targets), timesteps=3, seed=0)
    assert torch.allclose(objective(result.context), result.loss_after, atol=1e-5)  # the context scores as reported
    assert all(p.grad is None for p in tiny_model.parameters())


def test_concept_vector_attack_adds_the_mean_difference(tiny_model, targets):
    with_concept, without = ["a red triangle", "a triangle outline"], ["a red", "an outline"]
    attack = ConceptVectorAttack(tiny_model, with_concept=with_concept, without_concept=without, eta=2.0)
    result = attack(["a blue square"], targets[:1])
    vector = (tiny_model.encode_text(with_concept) - tiny_model.encode_text(without)).mean(0)
    assert torch.allclose(result.context, tiny_model.encode_text(["a blue square"]) + 2.0 * vector, atol=1e-6)
    assert torch.isfinite(result.loss_before).all() and torch.isfinite(result.loss_after).all()
    assert torch.isnan(attack(["a blue square"]).loss_after).all()  # no target: no objective to report
    with pytest.raises(ValueError, match="paired"):
        ConceptVectorAttack(tiny_model, with_concept=with_concept, without_concept=without[:1])


def test_attack_success_is_cumulative():
    rates = cumulative_attack_success([True, False, False, False], [False, True, False, False])
    assert rates == {"pre_attack_asr": 0.25, "attack_asr": 0.5, "attack_only_asr": 0.25}
    with pytest.raises(ValueError):
        cumulative_attack_success([True], [True, False])

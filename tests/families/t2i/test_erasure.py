"""Mechanics of the T2I erasers (TICoE with CCCM + HVRL, ESD, UCE) on a tiny *untrained* testbed: each test
fails on a stub that returns plausible shapes but does not implement the method. Behaviour on a trained testbed
(erasure rate falls, other concepts survive) is tested elsewhere with a shared trained fixture."""

import copy

import pytest
import torch
from torch import nn

from genguard.families.t2i.erasure import (
    ConvexConceptManifold,
    ESDEraser,
    HierarchicalVisualRepresentation,
    ReferenceStream,
    TICoEEraser,
    cross_attention_modules,
    last_word_token_embeddings,
    select_trainable,
    uce_edit,
)
from genguard.families.t2i.examples import TINY_TESTBED as TINY  # the contract test's tiny testbed
from genguard.io.model_files import load_model_dir, save_model_dir
from genguard.registry import build_model
from genguard.training import TrainConfig, fit

BANK = ["a triangle", "a wedge", "a red pyramid"]


@pytest.fixture(scope="module")
def references():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _fresh(tiny_model):
    """A private copy: erasers freeze (and ESD tests swap) the wrapped model's UNet in place."""
    return copy.deepcopy(tiny_model)


# ---------------------------------------------------------------------------------------------- CCCM
def test_cccm_weights_lie_on_the_simplex_and_the_mix_inside_the_hull():
    bank = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(0))
    cccm = ConvexConceptManifold(bank, tau=0.7, noise_std=0.0, layernorm=True)
    normed = cccm.bank
    low, high = normed.min(0).values, normed.max(0).values
    for _ in range(20):
        weights = cccm.sample_weights()
        assert (weights >= 0).all() and torch.isclose(weights.sum(), torch.tensor(1.0), atol=1e-5)
        mixed = cccm.mix(weights)[0]
        assert (mixed >= low - 1e-5).all() and (mixed <= high + 1e-5).all()
    # Without LN and jitter the condition is exactly the mixture of the recorded weights.
    plain = ConvexConceptManifold(bank, noise_std=0.0, layernorm=False)
    condition = plain()
    assert torch.allclose(condition, plain.mix(plain.weights), atol=1e-6)
    assert not torch.allclose(condition[0], bank[0]) and not torch.allclose(condition[0], bank.mean(0))
    # With LN the condition is normalised over the last dim (the extra non-affine LayerNorm).
    normalised = ConvexConceptManifold(bank, noise_std=1e-3)()
    assert torch.allclose(normalised.mean(-1), torch.zeros(1, 4), atol=1e-5)


def test_cccm_honours_the_resample_interval():
    bank = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    cccm = ConvexConceptManifold(bank, resample_every=3)
    conditions = [cccm() for _ in range(7)]
    for i in (1, 2):
        assert torch.equal(conditions[i], conditions[0])
    assert not torch.equal(conditions[3], conditions[2])
    assert torch.equal(conditions[4], conditions[3]) and torch.equal(conditions[5], conditions[3])
    assert not torch.equal(conditions[6], conditions[5])
    dense = ConvexConceptManifold(bank, resample_every=1)
    first, second = dense(), dense()
    assert not torch.equal(first, second)


def test_ticoe_keeps_the_empty_prompt_raw_and_logs_the_layernorm_gap(tiny_model):
    eraser = TICoEEraser(prompts=BANK, model=_fresh(tiny_model))
    assert torch.equal(eraser.empty_context, tiny_model.encode_text([""]))
    assert torch.equal(eraser.cccm.raw_bank, tiny_model.encode_text(BANK))
    stats = eraser.stats
    assert -1.0 <= stats["ln_cosine"] <= 1.0 and stats["ln_norm_ratio"] > 0 and stats["bank_size"] == 3
    raw = tiny_model.encode_text(BANK).detach()
    expected = torch.nn.functional.cosine_similarity(
        torch.nn.functional.layer_norm(raw, raw.shape[-1:]).flatten(1), raw.flatten(1)).mean()
    assert stats["ln_cosine"] == pytest.approx(float(expected), abs=1e-5)


# ---------------------------------------------------------------------------------------------- HVRL
def test_hvrl_keeps_the_shape_is_identity_at_lambda_zero_and_trains():
    latents = torch.randn(2, 4, 8, 8)
    hvrl = HierarchicalVisualRepresentation(4)
    assert hvrl.tokens(latents).shape == (2, 64 + 36 + 16, 4)  # scales 1, 0.75, 0.5 of 8 x 8
    out = hvrl(latents)
    assert out.shape == latents.shape and not torch.equal(out, latents)
    out.pow(2).sum().backward()
    for name, parameter in hvrl.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    identity = HierarchicalVisualRepresentation(4, lam=0.0)
    assert torch.equal(identity(latents), latents)
    with pytest.raises(ValueError, match="divide"):
        HierarchicalVisualRepresentation(4, heads=3)


# ---------------------------------------------------------------------------------------------- TICoE
def test_ticoe_loss_falls_and_the_teacher_never_changes(tiny_model, references):
    torch.manual_seed(0)
    eraser = TICoEEraser(prompts=BANK, model=_fresh(tiny_model), resample_every=1000)
    teacher_before = copy.deepcopy(eraser.teacher.state_dict())
    student_before = copy.deepcopy(eraser.student.state_dict())
    batch = {"image": references}

    def fixed_loss():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            eraser.eval()
            with torch.no_grad():
                loss, _ = eraser.training_loss(batch)
            eraser.train()
        return float(loss)

    eraser.cccm()  # draw the (then fixed) mixture before measuring
    before = fixed_loss()
    groups = eraser.parameter_groups(3e-5, 0.0)
    assert groups[1]["lr"] == pytest.approx(5 * 3e-5)  # HVRL at 5x the UNet's learning rate
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in eraser.hvrl.parameters()}
    optimizer = torch.optim.Adam(groups)
    for _ in range(12):
        loss, _ = eraser.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss() < 0.8 * before
    for key, value in eraser.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert any(not torch.equal(v, student_before[k]) for k, v in eraser.student.state_dict().items())


def test_ticoe_with_erase_weight_zero_leaves_the_student_identical(tiny_model, references):
    eraser = TICoEEraser(prompts=BANK, model=_fresh(tiny_model), erase_weight=0.0)
    stream = ReferenceStream(references, batch_size=2, generator=torch.Generator().manual_seed(0))
    # AdamW with weight decay: the decay alone would move the weights; a zero-weight run must not.
    fit(eraser, stream, None, TrainConfig(steps=3, batch_size=2, lr=1e-2, weight_decay=0.1), show_progress=False)
    for (name, student), teacher in zip(eraser.student.state_dict().items(), eraser.teacher.state_dict().values()):
        assert torch.equal(student, teacher), name


def test_train_params_select_the_esd_subsets(tiny_model):
    unet = copy.deepcopy(tiny_model.unet)
    xattn = select_trainable(unet, "xattn")
    assert xattn and all("attn2" in n for n in xattn)
    noxattn = select_trainable(unet, "noxattn")
    assert noxattn and not any("attn2" in n or n.startswith(("time_embedding", "conv_out")) for n in noxattn)
    assert set(xattn).isdisjoint(noxattn)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(noxattn)


@pytest.mark.parametrize("method", ["ticoe", "esd"])
def test_erasers_rebuild_from_their_spec(method, tmp_path, references):
    spec = {"family": "t2i", "method": method, "model_spec": {"family": "t2i", "method": "t2i_testbed", **TINY},
            "prompts": BANK[:2], **({"sampling_steps": 3} if method == "esd" else {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        eraser = build_model(spec)
    batch = {"image": references[:2]}
    loss, _ = eraser.training_loss(batch)
    loss.backward()
    with torch.no_grad():
        for p in eraser.student.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    eraser.eval()
    with torch.no_grad():
        expected = eraser.predict_step(batch)
    save_model_dir(eraser, tmp_path / "eraser")
    loaded = load_model_dir(tmp_path / "eraser").model.eval()
    assert loaded.init_spec == eraser.init_spec
    with torch.no_grad():
        assert torch.allclose(loaded.predict_step(batch), expected, atol=1e-6)
    edited = eraser.edited_model()
    assert edited.unet is not eraser.student and edited.unet is not eraser.teacher
    for key, value in edited.unet.state_dict().items():
        assert torch.equal(value, eraser.student.state_dict()[key])


# ---------------------------------------------------------------------------------------------- ESD
class StubUNet(nn.Module):
    """Output = a known function of (latents, t, context), counting calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, sample, timestep, encoder_hidden_states):
        self.calls += 1
        timestep = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1)
        shift = encoder_hidden_states[:, :, :3].sum((1, 2))[:, None, None, None]
        out = self.scale * sample * 0.5 + shift + 0.001 * timestep[:, None, None, None]
        return type("Output", (), {"sample": out})()


def test_esd_target_is_the_original_formula_and_x_t_comes_from_the_student(tiny_model):
    model = _fresh(tiny_model)
    eraser = ESDEraser(prompts=["a triangle"], model=model, sampling_steps=6)
    teacher, student = StubUNet(), StubUNet()
    teacher.config = student.config = model.unet.config  # the testbed reads the latent shape from it
    eraser.model.unet, eraser.student = teacher, student
    latents = torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 500])
    concept = eraser.concept_context.expand(2, -1, -1)
    empty = eraser.empty_context.expand(2, -1, -1)
    conditional = teacher(latents, timesteps, concept).sample
    unconditional = teacher(latents, timesteps, empty).sample
    assert not torch.allclose(conditional, unconditional)
    expected = unconditional - 1.0 * (conditional - unconditional)  # ε(∅) − η(ε(c) − ε(∅)), η = 1
    assert torch.allclose(eraser.target(latents, timesteps, concept), expected, atol=1e-6)

    teacher.calls = student.calls = 0
    torch.manual_seed(3)
    loss, logs = eraser.training_loss({"image": torch.zeros(2, 3, 16, 16)})
    assert teacher.calls == 1  # one batched target call; the teacher never samples
    assert student.calls == int(logs["stop_step"]) + 1  # k guided sampling calls + the prediction
    assert torch.isfinite(loss) and loss.requires_grad


# ---------------------------------------------------------------------------------------------- UCE
def test_uce_maps_the_erased_token_to_the_guide_and_preserves_the_rest(tiny_model):
    erase, guide, keep = ["a red triangle"], ["a red square"], ["a blue circle", "a green diamond", "a yellow box"]
    original = copy.deepcopy(tiny_model.unet.state_dict())
    edited = uce_edit(tiny_model, erase, guide, keep)
    c_erase, c_guide = last_word_token_embeddings(tiny_model, erase), last_word_token_embeddings(tiny_model, guide)
    c_keep = last_word_token_embeddings(tiny_model, keep)
    modules = cross_attention_modules(edited)
    assert len(modules) == len(cross_attention_modules(tiny_model.unet)) > 0
    for (name, new), (_, old) in zip(modules, cross_attention_modules(tiny_model.unet)):
        for projection in ("to_k", "to_v"):
            w_new, w_old = getattr(new, projection).weight, getattr(old, projection).weight
            wanted = c_guide @ w_old.T
            moved = (c_erase @ w_new.T - wanted).norm() / (c_erase @ w_old.T - wanted).norm()
            assert moved < 0.1, (name, projection, float(moved))
            drift = (c_keep @ w_new.T - c_keep @ w_old.T).norm() / (c_keep @ w_old.T).norm()
            assert drift < 0.05, (name, projection, float(drift))
        assert torch.equal(new.to_q.weight, old.to_q.weight)
    for key, value in tiny_model.unet.state_dict().items():
        assert torch.equal(value, original[key]), "uce_edit must not touch the input UNet"
    # Only to_k / to_v of cross-attention change.
    changed = {k for k, v in edited.state_dict().items() if not torch.equal(v, original[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)


def test_uce_default_guide_is_the_empty_prompt(tiny_model):
    edited = uce_edit(tiny_model, ["a triangle"])
    c_erase = last_word_token_embeddings(tiny_model, ["a triangle"])
    c_empty = last_word_token_embeddings(tiny_model, [""])
    assert torch.equal(c_empty, tiny_model.encode_text([""])[:, 0])  # the start token's output
    _, new = cross_attention_modules(edited)[0]
    _, old = cross_attention_modules(tiny_model.unet)[0]
    wanted = c_empty @ old.to_k.weight.T
    assert (c_erase @ new.to_k.weight.T - wanted).norm() < 0.1 * (c_erase @ old.to_k.weight.T - wanted).norm()

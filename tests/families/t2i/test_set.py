"""SET (arXiv 2604.12446) mechanics on a tiny untrained testbed: the scaling processor, the probe's
feature layout, the Deep-SVDD response space and the T2IShield-FTT baseline. Behaviour on a trained,
backdoored testbed (AUROC) is tested elsewhere with a shared trained-model fixture."""

import math

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from genguard.families.t2i.response_space import (
    FeatureRows,
    ResponseSpace,
    calibrate_ftt_threshold,
    fit_response_space,
    ftt_distances,
    ftt_flags,
    ftt_scores,
    scores,
)
from genguard.families.t2i.scaling_probe import (
    ProbeConfig,
    ProbeState,
    ScaledAttentionProcessor,
    ScalingProbe,
    attention_modules,
    scaled_attention,
)
from genguard.io.model_files import load_model_dir, save_model_dir
from genguard.registry import MODELS

PROMPTS = ["a red circle", "a blue square", "an outline of a green diamond", "a yellow triangle"]
FAST = {"schedule_steps": 10, "probe_steps": 2, "batch_size": 4, "show_progress": False}


@pytest.fixture(scope="module")
def probe(model):
    return ScalingProbe(model, {**FAST, "scales": (1.0, 7.0, 0.3)})


@pytest.fixture(scope="module")
def probed(probe):
    return probe.extract(PROMPTS, seeds=[0, 1, 2, 3])


# ---------------------------------------------------------------------------------------------- processor
def test_unit_temperature_processor_equals_diffusers_default_attention(model):
    unet = model.unet
    latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, model.max_length, 32, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor(500)
    saved = unet.attn_processors
    outputs = {}
    with torch.no_grad():
        for name, processor in {"default": AttnProcessor(), "sdpa": AttnProcessor2_0()}.items():
            unet.set_attn_processor(processor)
            outputs[name] = unet(latents, timestep, encoder_hidden_states=context).sample
        state = ProbeState(phase="probe", scale=1.0)   # λ = 1 in a probe run is plain attention
        for module_name, module in attention_modules(unet):
            module.set_processor(ScaledAttentionProcessor(module_name, state, is_cross=module.is_cross_attention))
        ours = unet(latents, timestep, encoder_hidden_states=context).sample
    unet.set_attn_processor(saved)
    assert torch.allclose(ours, outputs["default"], atol=1e-6)
    assert torch.allclose(ours, outputs["sdpa"], atol=1e-5)


def test_scaled_attention_is_tempered_softmax_and_has_the_right_limits():
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 5, 4, generator=generator)
    key, value = torch.randn(3, 6, 4, generator=generator), torch.randn(3, 6, 4, generator=generator)
    scale = 1 / math.sqrt(4)
    for lam in (0.2, 1.0, 7.0):
        manual = torch.softmax(lam * query @ key.transpose(1, 2) * scale, dim=-1) @ value
        output, probs = scaled_attention(query, key, value, scale=scale, inverse_temperature=lam)
        assert torch.allclose(output, manual, atol=1e-6)
        assert torch.allclose(probs.sum(-1), torch.ones(3, 5), atol=1e-6)
    sharp, _ = scaled_attention(query, key, value, scale=scale, inverse_temperature=1e4)
    argmax = (query @ key.transpose(1, 2)).argmax(-1)
    assert torch.allclose(sharp, torch.gather(value, 1, argmax[..., None].expand(-1, -1, 4)), atol=1e-4)
    flat, _ = scaled_attention(query, key, value, scale=scale, inverse_temperature=1e-6)
    assert torch.allclose(flat, value.mean(1, keepdim=True).expand_as(flat), atol=1e-4)


# ---------------------------------------------------------------------------------------------- probe
def test_probe_layers_are_down_up_cross_attention_at_the_chosen_query_length(model, probe):
    assert probe.layers == ("down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                            "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                            "up_blocks.1.attentions.1.transformer_blocks.0.attn2")
    low = ScalingProbe(model, {**FAST, "query_lengths": [16]})
    assert len(low.layers) == 3 and not any(name.startswith("mid_block") for name in low.layers)
    assert all(name.endswith("attn2") for name in low.layers)
    with pytest.raises(ValueError, match="query length"):
        ScalingProbe(model, {**FAST, "query_lengths": [999]})


def test_feature_layout_is_scale_major_then_step_then_layer(model, probe, probed):
    assert probed.features.shape == (4, 3 * 2 * 3)
    grid = probed.grid()
    assert torch.equal(grid.reshape(4, -1), probed.features)
    assert torch.equal(grid[:, 0], torch.zeros_like(grid[:, 0]))      # λ = 1 "probe": zero offset
    assert (grid[:, 1:] > 0).all()
    # Strong sharpening moves attention output more than mild flattening at step 1 (first step: no drift).
    assert (grid[:, 1, 0] > grid[:, 2, 0]).float().mean() > 0.5
    # A one-scale, one-step probe is the matching slice of the full grid (axes recovered by reshape).
    single = ScalingProbe(model, {**FAST, "scales": (7.0,), "probe_steps": 1}).extract(PROMPTS, seeds=[0, 1, 2, 3])
    assert torch.allclose(single.features, grid[:, 1, 0, :], atol=1e-7)


def test_probe_is_deterministic_for_a_seed_and_restores_the_unet(model, probe, probed):
    before = {name: type(p) for name, p in model.unet.attn_processors.items()}
    again = probe.extract(PROMPTS[:2], seeds=[0, 1])
    assert torch.allclose(again.features, probed.features[:2], atol=1e-7)
    other = probe.extract(PROMPTS[:2], seeds=[5, 6])
    assert not torch.allclose(other.features, probed.features[:2])
    assert {name: type(p) for name, p in model.unet.attn_processors.items()} == before


def test_self_attention_scaling_is_a_flag(model):
    config = {**FAST, "scales": (7.0,), "probe_steps": 1}
    with_self = ScalingProbe(model, config).extract(PROMPTS[:2], seeds=[0, 1]).features
    cross_only = ScalingProbe(model, {**config, "scale_self_attention": False}).extract(PROMPTS[:2], [0, 1]).features
    assert not torch.allclose(with_self, cross_only)
    # DDIM is stateless: a fresh scheduler per trajectory changes nothing on the testbed.
    fresh = ScalingProbe(model, {**config, "fresh_scheduler_per_trajectory": True}).extract(PROMPTS[:2], [0, 1])
    assert torch.allclose(fresh.features, with_self, atol=1e-7)


def test_baseline_run_captures_cross_attention_maps(model, probed):
    maps = probed.attention_maps
    assert maps.shape == (4, model.max_length, 64)
    assert torch.allclose(maps.sum(1), torch.ones(4, 64), atol=1e-5)    # a distribution over tokens per query
    assert probed.token_lengths.tolist() == [len(model.tokenizer(p).input_ids) for p in PROMPTS]
    assert ftt_distances(maps, probed.token_lengths).shape == (4,)


def test_probe_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown SET probe options"):
        ProbeConfig.from_dict({"scale": [1.0]})


# ---------------------------------------------------------------------------------------------- response space
def _gaussian_features(n, seed, shift=0.0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.1, 1.0, 2 * 2 * 3)
    return base + 0.1 * torch.randn(n, 12, generator=generator) + shift * torch.randn(n, 12, generator=generator)


@pytest.fixture(scope="module")
def response_space():
    fit_features = _gaussian_features(200, seed=0)
    model, history = fit_response_space(fit_features, {"model": {"warmup_epochs": 2},
                                                       "train": {"epochs": 25, "batch_size": 64}},
                                        scales=2, steps=2)
    return model, history, fit_features


def test_svdd_loss_falls_and_threshold_is_the_one_minus_nu_quantile(response_space):
    model, history, fit_features = response_space
    main = [record["train/loss"] for record in history if record["stage"] == "main"]
    assert main[-1] < 0.8 * main[0]
    fit_scores = scores(model, fit_features)
    assert float(model.threshold) == pytest.approx(float(torch.quantile(fit_scores, 0.95)), rel=1e-5)
    assert abs(float((fit_scores > model.threshold).float().mean()) - model.nu) <= 0.01
    assert model.flags(fit_features).float().mean() <= model.nu + 0.01


def test_svdd_scores_far_out_of_distribution_above_held_out_clean(response_space):
    model, _, _ = response_space
    held_out = scores(model, _gaussian_features(100, seed=1))
    far = scores(model, _gaussian_features(100, seed=2, shift=1.0))
    assert far.median() > held_out.quantile(0.9)
    assert (far > model.threshold).float().mean() > 0.8


def test_response_space_is_registered_and_round_trips(response_space, tmp_path):
    model, _, fit_features = response_space
    assert MODELS.get("set") is not None
    assert model.init_spec["family"] == "t2i" and model.init_spec["method"] == "set"
    buffers = dict(model.named_buffers())
    assert {"mean", "std", "centre", "threshold"} <= set(buffers)
    save_model_dir(model, tmp_path / "set")
    loaded = load_model_dir(tmp_path / "set").model
    assert isinstance(loaded, ResponseSpace)
    assert torch.allclose(scores(loaded, fit_features), scores(model, fit_features), atol=1e-6)
    assert float(loaded.threshold) == float(model.threshold)


def test_response_space_centre_is_the_mean_embedding_and_constant_features_survive():
    features = torch.randn(16, 12, generator=torch.Generator().manual_seed(0))
    features[:, 3] = 2.0                                  # σ = 0 column: standardised with σ := 1
    model = ResponseSpace(scales=2, steps=2, layers=3)
    with pytest.raises(RuntimeError, match="calibrate"):
        model.flags(features)
    model.begin_stage("warmup", FeatureRows(features))
    assert model.std[3] == 1.0 and not model.radius.requires_grad
    with torch.no_grad():
        assert torch.allclose(model.eval().embed(features).mean(0), model.centre, atol=1e-6)
    model.begin_stage("main", FeatureRows(features))
    assert model.radius.requires_grad
    with pytest.raises(ValueError, match="columns"):
        model.distances(torch.zeros(2, 10))


# ---------------------------------------------------------------------------------------------- T2IShield FTT
def test_ftt_ranks_assimilated_maps_above_varied_ones():
    generator = torch.Generator().manual_seed(0)
    tokens, queries = 8, 64
    shared = torch.rand(queries, generator=generator)
    assimilated = shared.expand(tokens, queries).clone()
    varied = torch.rand(tokens, queries, generator=generator)
    maps = torch.stack([assimilated, varied])
    lengths = torch.tensor([6, 6])
    distances = ftt_distances(maps, lengths)
    assert distances[0] == pytest.approx(0.0, abs=1e-6) and distances[1] > 0.1
    suspicion = ftt_scores(maps, lengths)
    assert suspicion[0] > suspicion[1]
    # Padding beyond the real tokens is ignored: changing it changes nothing.
    padded = maps.clone()
    padded[:, 6:] = torch.rand(2, tokens - 6, queries, generator=generator)
    assert torch.allclose(ftt_distances(padded, lengths), distances)
    clean = torch.linspace(1.0, 2.0, 101)
    threshold = calibrate_ftt_threshold(clean, percentile=5.0)
    assert threshold == pytest.approx(1.05)
    assert ftt_flags(clean, threshold).float().mean() == pytest.approx(0.05, abs=0.01)

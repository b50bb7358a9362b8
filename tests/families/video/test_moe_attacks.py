"""The video MoE and its attacks on tiny random models: routing, the expert mask, cost, the attack skeleton's
guarantees (eps-ball, pixel range, eps = 0, determinism), the temporal step rule and each objective's reach."""

import pytest
import torch
import torch.nn.functional as F

from genguard.families.video.attacks import ATTACKS, build_attack, lipschitz_ratio
from genguard.families.video.moe import VideoMoE
from genguard.families.video.regimes import build_regime
from genguard.families.video.robustness import attack_cost, count_flops, inference_cost

EPS = 8 / 255
KINDS = {"pgd": {}, "router": {"gamma1": 0.3, "lip_weight": 1e-3}, "expert": {"lip_weight": 1e-5},
         "joint": {"gamma1": 0.3, "lip_weight": 1e-5}}


def tiny_moe(seed: int = 0, **options) -> VideoMoE:
    torch.manual_seed(seed)
    spec = {"classes": 4, "experts": 4, "router": {"kind": "tiny3d", "width": 4, "depth": 2},
            "expert": {"kind": "tiny3d", "width": 8, "depth": 2}, **options}
    return VideoMoE(**spec).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 4, 16, 16, generator=generator), torch.tensor([0, 1, 2, 3, 0, 1])


def test_top1_dispatch_runs_only_the_selected_expert_and_matches_the_dense_mix_of_one(batch):
    clips, _ = batch
    model = tiny_moe()
    with torch.no_grad():
        logits, routing = model(clips, return_routing=True)
        expected = torch.stack([routing.gates[b, 0] * model.expert(int(routing.top[b]), clips[b:b + 1])[0]
                                for b in range(clips.shape[0])])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.equal(routing.top, routing.probs.argmax(dim=1))


def test_force_equals_the_forced_expert_times_its_gate(batch):
    clips, _ = batch
    model = tiny_moe()
    force = torch.tensor([3, 2, 1, 0, 3, 2])
    with torch.no_grad():
        logits = model(clips, force=force)
        probs = model.route(clips)
        expected = torch.stack([probs[b, force[b]] * model.expert(int(force[b]), clips[b:b + 1])[0]
                                for b in range(clips.shape[0])])
        ungated = model.experts_on(clips, force)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(ungated * probs.gather(1, force[:, None]), logits, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        model(clips, force=torch.full((6,), 4))


def test_moe_flops_are_router_plus_one_expert_and_save_over_sixty_percent_against_dense():
    model = tiny_moe(router={"kind": "tiny3d", "width": 4, "depth": 2})
    one = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        router, expert = count_flops(model.route, one), count_flops(lambda x: model.expert(0, x), one)
        assert count_flops(model, one) == pytest.approx(router + expert, rel=0.01)
        assert count_flops(model.forward_dense, one) == pytest.approx(router + 4 * expert, rel=0.01)
    cost = inference_cost(model, (3, 4, 16, 16), batch_size=4, repeats=1)
    assert cost["flop_saving"] > 0.6


def test_router_aux_supervision_targets_label_mod_experts(batch):
    clips, labels = batch
    model = tiny_moe(router_aux={"kind": "supervised_mod", "weight": 1.0})
    _, routing = model(clips, return_routing=True)
    assert torch.isclose(model.aux_loss(routing, labels + 4), F.cross_entropy(routing.logits, labels % 4))
    with pytest.raises(ValueError, match="router_aux"):
        tiny_moe(router_aux={"kind": "balance"})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_attack_stays_in_the_eps_ball_and_pixel_range_and_is_deterministic(kind, batch):
    clips, labels = batch
    clips = clips.clone()
    clips[0] = 0.0  # pixels at the bounds: the projection onto [0, 1] must hold there too
    clips[1] = 1.0
    model = tiny_moe()
    attack = build_attack({"kind": kind, "eps": EPS, "steps": 3, "temporal": True, **KINDS[kind]})
    adv = attack(model, clips, labels)
    assert adv.shape == clips.shape and not adv.requires_grad
    assert float((adv - clips).abs().max()) <= EPS + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - clips).abs().max()) > EPS / 2  # it moved
    assert torch.equal(attack(model, clips, labels), adv)
    assert not model.training


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_eps_zero_returns_the_input(kind, batch):
    clips, labels = batch
    adv = build_attack({"kind": kind, "eps": 0.0, "steps": 5, **KINDS[kind]})(tiny_moe(), clips, labels)
    assert torch.equal(adv, clips)


def test_an_attack_inside_training_leaves_parameter_gradients_and_mode_alone(batch):
    clips, labels = batch
    model = tiny_moe().train()
    build_attack({"kind": "joint", "steps": 2})(model, clips, labels)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_temporal_step_is_per_frame_starts_at_alpha_eps_and_never_exceeds_it(batch):
    clips, labels = batch
    attack = build_attack({"kind": "pgd", "eps": EPS, "steps": 4, "temporal": True, "alpha_rel": 0.25})
    grad = torch.randn(clips.shape)
    momentum = torch.zeros(clips.shape[0], 1, clips.shape[2], 1, 1)
    step, momentum = attack.step_size(grad, momentum)
    assert torch.allclose(torch.as_tensor(step), torch.tensor(0.25 * EPS))
    frame_norms = grad.pow(2).sum(dim=(1, 3, 4), keepdim=True).sqrt()
    assert torch.allclose(momentum, frame_norms)
    step, _ = attack.step_size(grad, momentum)
    assert step.shape == (6, 1, 4, 1, 1)
    assert bool((step < 0.25 * EPS).all())
    # Frames with larger accumulated gradient norms get smaller steps.
    order = momentum.flatten().argsort()
    assert bool((step.flatten()[order].diff() <= 1e-12).all())
    attack(tiny_moe(), clips, labels)
    assert attack.mean_steps[0] == pytest.approx(0.25 * EPS) and max(attack.mean_steps) <= 0.25 * EPS + 1e-9


def test_raw_update_normalises_per_clip_so_large_gradient_frames_move_further():
    attack = build_attack({"kind": "pgd", "update": "raw"})
    grad = torch.ones(1, 3, 2, 4, 4)
    grad[:, :, 1] = 4.0  # the second frame's gradient is 4x the first's
    direction = attack.direction(grad)
    assert float(direction.abs().max()) == 1.0
    assert torch.allclose(direction[:, :, 0], torch.full_like(direction[:, :, 0], 0.25))


def test_lipschitz_ratio_is_finite_at_the_clean_point_and_scale_free_for_a_linear_map():
    x = torch.rand(3, 3, 2, 4, 4)
    assert torch.equal(lipschitz_ratio(x * 2, x * 2, x, x), torch.zeros(3))
    delta = torch.randn_like(x) * 0.01
    assert torch.allclose(lipschitz_ratio(2 * (x + delta), 2 * x, x + delta, x), torch.full((3,), 4.0), rtol=1e-4)


def test_gradients_reach_the_input_through_hard_routing(batch):
    clips, labels = batch
    model = tiny_moe()
    x = clips.clone().requires_grad_(True)
    logits, routing = model(x, return_routing=True)
    (moe_grad,) = torch.autograd.grad(F.cross_entropy(logits, labels), x)
    x = clips.clone().requires_grad_(True)
    (router_grad,) = torch.autograd.grad(F.cross_entropy(model.router_logits(x), routing.top), x)
    assert float(moe_grad.abs().sum()) > 0 and float(router_grad.abs().sum()) > 0


def test_router_attack_sees_only_the_router(batch):
    clips, labels = batch
    model, other = tiny_moe(seed=0), tiny_moe(seed=0)
    with torch.no_grad():
        for parameter in other.experts.parameters():
            parameter.add_(torch.randn_like(parameter))
    attack = build_attack({"kind": "router", "steps": 3, "temporal": True, "gamma1": 0.3, "lip_weight": 1e-3})
    assert torch.equal(attack(model, clips, labels), attack(other, clips, labels))
    assert not torch.equal(build_attack({"kind": "pgd", "steps": 3})(model, clips, labels),
                           build_attack({"kind": "pgd", "steps": 3})(other, clips, labels))


def test_expert_attack_keeps_the_routing_frozen_and_joint_without_router_terms_is_pgd(batch):
    clips, labels = batch
    model = tiny_moe()
    expert = build_attack({"kind": "expert", "steps": 3})
    chosen = torch.tensor([1, 1, 2, 2, 3, 3])
    adv = expert(model, clips, labels, experts=chosen)
    other_expert = build_attack({"kind": "expert", "steps": 3})(model, clips, labels, experts=(chosen + 1) % 4)
    assert not torch.equal(adv, other_expert)
    joint = build_attack({"kind": "joint", "steps": 3, "gamma1": 0.0, "gamma2": 0.0, "router_lip_weight": 0.0})
    assert torch.equal(joint(model, clips, labels), build_attack({"kind": "pgd", "steps": 3})(model, clips, labels))


def test_attack_cost_counts_forward_and_backward_flops(batch):
    clips, labels = batch
    model = tiny_moe()
    pgd = attack_cost(model, build_attack({"kind": "pgd", "steps": 4}), clips, labels)
    router = attack_cost(model, build_attack({"kind": "router", "steps": 4}), clips, labels)
    with torch.no_grad():
        router_share = count_flops(model.route, clips) / count_flops(model, clips)
    # the clean routing decision (the router alone) + 4 x (forward + a backward to the input only, which skips
    # every weight gradient and so costs about one forward); PGD needs no clean F(x)
    assert pgd["model_forward_equivalents"] == pytest.approx(8.0 + router_share, rel=0.05)
    assert router["model_forward_equivalents"] == pytest.approx(9 * router_share, rel=0.1)
    assert pgd["gradient_steps"] == 4


def test_bad_configs_name_the_choices():
    with pytest.raises(ValueError, match="one of"):
        build_attack({"kind": "pgd", "update": "adam"})
    with pytest.raises(KeyError, match="registered"):
        build_attack({"kind": "fgsm-video"})
    with pytest.raises(ValueError, match="bad options"):
        build_attack({"kind": "router", "gamma3": 1})
    with pytest.raises(ValueError, match="bad options"):
        build_regime({"kind": "j_tlat", "steps": 3})
    assert set(ATTACKS.names()) == {"pgd", "router", "expert", "joint"}


def test_j_tlat_step_losses_reach_only_their_own_part(batch):
    """Step 1 (router) has no gradient on the experts, step 2 (experts) none on the router, step 3 (whole MoE)
    reaches both: summed into one loss, each part is trained by its own steps + step 3."""
    clips, labels = batch
    model = tiny_moe(regime={"kind": "j_tlat", "router_attack": {"steps": 1}, "expert_attack": {"steps": 1},
                             "joint_attack": {"steps": 1}}).train()

    def touched(loss: torch.Tensor) -> tuple[bool, bool]:
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        def moved(module):
            return any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.parameters())
        return moved(model.router), moved(model.experts)

    step1, step2, step3, logs = model.regime.steps(model, clips, labels)
    assert touched(step1) == (True, False)
    assert touched(step2) == (False, True)
    assert touched(step3) == (True, True)
    assert model.training and 0.0 <= logs["switch_rate"] <= 1.0
    total, logged = model.training_loss({"clips": clips, "label": labels})
    assert {"router_step", "expert_step", "moe_step", "switch_rate"} <= set(logged)
    assert torch.isfinite(total)


def test_clip_sets_ship_to_deepspeed_ranks_unchanged(tmp_path):
    from genguard.data.datasets import dataset_from_spec, dataset_to_spec
    from genguard.families.video.clips import ClipSet

    clips = ClipSet(torch.randint(0, 256, (4, 3, 2, 8, 8), dtype=torch.uint8), [0, 1, 2, 3], ["a", "b", "a", "b"])
    again = dataset_from_spec(dataset_to_spec(clips, tmp_path))
    assert torch.equal(again.clips, clips.clips) and torch.equal(again.labels, clips.labels)
    assert again.groups == clips.groups and torch.equal(again[2]["clips"], clips[2]["clips"])


def test_seeded_attacks_repeat_their_start_and_training_attacks_draw_fresh_noise(batch):
    clips, labels = batch
    model = tiny_moe()
    seeded = build_attack({"kind": "pgd", "steps": 1, "seed": 3})
    assert torch.equal(seeded(model, clips, labels), seeded(model, clips, labels))
    fresh = build_attack({"kind": "pgd", "steps": 1, "seed": None})
    torch.manual_seed(0)
    first, second = fresh(model, clips, labels), fresh(model, clips, labels)
    assert not torch.equal(first, second)  # a new start for every batch
    torch.manual_seed(0)
    assert torch.equal(fresh(model, clips, labels), first)  # and reproducible from the loop's seed


def test_the_guidance_term_moves_routing_towards_the_clean_least_confident_expert():
    """TLGA-R's -gamma1 * CE(router, r_low): one small step raises log pi_{r_low} more with guidance than
    without (first order, so it holds on any model)."""
    model = tiny_moe(seed=2)
    clips, labels = torch.rand(16, 3, 4, 16, 16, generator=torch.Generator().manual_seed(5)), torch.arange(16) % 4
    with torch.no_grad():
        clean = model.route(clips)
    low = clean.argmin(dim=1, keepdim=True)

    def weakest_gain(gamma1: float) -> float:
        attack = build_attack({"kind": "router", "eps": 1 / 255, "steps": 1, "alpha_rel": 1.0,
                               "random_start": False, "gamma1": gamma1})
        with torch.no_grad():
            probs = model.route(attack(model, clips, labels))
        return float((probs.log().gather(1, low) - clean.log().gather(1, low)).mean())

    assert weakest_gain(10.0) > weakest_gain(0.0) + 0.01


def test_narrow_torchvision_router_builds_at_its_width_and_weights_come_only_from_a_local_file(tmp_path):
    from genguard.families.video.networks import build_network

    router = build_network({"kind": "r3d_18", "width": 8}, 4)
    assert router.stem[0].out_channels == 8 and router.fc.in_features == 64
    with torch.no_grad():
        assert router(torch.rand(2, 3, 4, 32, 32)).shape == (2, 4)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_network({"kind": "mc3_18", "weights": str(tmp_path / "absent.pt")}, 4)

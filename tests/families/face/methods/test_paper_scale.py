"""Trainable-parameter counts at paper scale (open_clip ViT-L-14-quickgelu: 24 blocks, width 1024), by
shape only: every tensor on the meta device, no weight allocated, no SVD computed."""

import pytest
import torch

from genguard.families.face.methods import build_detector

VIT_L = {"name": "ViT-L-14-quickgelu", "pretrained": None, "extra": {"device": "meta"}}
HEAD = 1024 + 1  # Linear(1024, 1) on ln_post(CLS)


def _meta(method, **options):
    with torch.device("meta"):
        model = build_detector(method, backbone=VIT_L, **options)
    assert all(p.is_meta for p in model.parameters())
    return model


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_effort_at_vit_l14():
    model = _meta("effort")  # residual rank 1: r = 1023, as the official code
    assert len(model.sites) == 48 and sum(site.split.blocks for site in model.sites) == 96
    assert model.residual_parameter_count() == 96 * (1024 + 1 + 1024) == 196_704
    assert _trainable(model) == 196_704 + HEAD


def test_masm_at_vit_l14_with_four_subspaces_on_all_layers():
    model = _meta("masm")  # K = 4, r_a = 1, all 24 blocks
    assert model.subspace_parameter_count() == 96 * 4 * (1024 + 1 + 1024) == 786_816
    assert _trainable(model) == 786_816 + HEAD
    assert len(model.unit_names) == 24  # the probe keeps round(24 / 3) = 8 blocks: 262,272 learn


def test_masm_decomposing_eight_blocks():
    assert _meta("masm", blocks=list(range(8))).subspace_parameter_count() == 262_272


@pytest.mark.parametrize(("options", "bases", "total"), [
    ({}, 393_216, 393_216 + HEAD),                                       # layer variant, blocks 12-23 x 2 sites
    ({"blocks": list(range(24)), "sites": "block"}, 393_216, 393_216 + HEAD),  # one site after every block
    ({"variant": "feature"}, 16_384, 16_384 + 2 * 1024 * 182 + HEAD),    # 390,145
    ({"variant": "feature", "adapter_rank": 200}, 16_384, 16_384 + 2 * 1024 * 200 + HEAD),  # 427,009 (v1)
])
def test_selop_at_vit_l14_within_the_papers_budget(options, bases, total):
    model = _meta("selop", budget=[390_000, 430_000], **options)
    assert sum(s.raw_basis.numel() for s in model.subspace_modules()) == bases
    assert _trainable(model) == total

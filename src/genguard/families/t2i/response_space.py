"""SET's benign response space (Li et al., arXiv 2604.12446; official code ``ResponseSpace``) and the
T2IShield-FTT baseline (Wang et al., arXiv 2407.04215).

SET: scaling-probe features (:mod:`genguard.families.t2i.scaling_probe`) of clean prompts are
standardised, embedded by a layer-permutation-invariant DeepSets encoder and enclosed in a
soft-boundary Deep-SVDD hypersphere (Ruff et al., ICML 2018). A prompt's score is its squared distance
to the centre; it is flagged when the score exceeds the threshold R², the (1 − ν) quantile of the
clean fit distances.

Choices where the spec leaves room (recorded here):

- **Token layout**: features are scale-major, then step, then layer, so the per-layer tokens are
  ``x.view(S, T, L).permute(2, 0, 1).reshape(L, S·T)`` (one S·T vector per probe layer); a literal
  ``view(L, S·T)`` of that layout would mix layers into tokens.
- **Variant**: the release variant (constant lr, 5 warm-up + 100 epochs). Warm-up epochs train the
  encoder with R frozen at its initial 0.1 (as Ruff et al.'s soft-boundary code leaves R alone during
  warm-up); they are a training stage of their own. The internal variant's trimmed re-centring and
  cosine schedule are not implemented.
- **Centre** c: mean embedding of the fit set in eval mode, computed in ``begin_stage`` of the first
  stage, so it is fixed before the first gradient step (and rebuilt identically from the same data).
- **T2IShield FTT**: tokens are the prompt's word tokens plus its end token (the official code's first
  len(tokens) maps after the start token are words, end token and one pad: an off-by-one we drop;
  the start token is an attention sink and is excluded there too). Each token map is max-normalised to
  [0, 1]; the threshold is the 5th percentile of clean prompts' distances (the official 2.5 is for
  16×16 maps on SD and means nothing on 8×8 maps; spec review note 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from genguard.registry import MODELS
from genguard.training import TrainConfig, TrainResult, fit
from genguard.training.trainable import Trainable

FAMILY = "t2i"
METHOD = "set"
#: The detector training of the release code: Adam, lr 1e-3, weight decay 1e-4 (encoder only), batch 256.
DEFAULT_TRAIN = {"epochs": 100, "batch_size": 256, "lr": 1e-3, "weight_decay": 1e-4,
                 "optimizer": {"name": "adam"}, "schedule": {"name": "constant"}, "select_best": False}


class FeatureRows(Dataset):
    """A feature matrix as a dataset of ``{"features": row}`` dicts (what the one loop batches)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = torch.as_tensor(features, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[index]}


def _feature_matrix(train_set: Any) -> torch.Tensor:
    if isinstance(train_set, FeatureRows):
        return train_set.features
    if isinstance(train_set, torch.Tensor):
        return train_set.float()
    return torch.stack([train_set[i]["features"] for i in range(len(train_set))]).float()


class ResponseSpace(Trainable):
    """Standardise → DeepSets encoder → distance to a fixed centre; soft-boundary Deep-SVDD objective."""

    def __init__(self, *, scales: int = 5, steps: int = 5, layers: int = 5, hidden: int = 64, embedding: int = 32,
                 nu: float = 0.05, initial_radius: float = 0.1, warmup_epochs: int = 5) -> None:
        super().__init__({"family": FAMILY, "method": METHOD, "scales": scales, "steps": steps, "layers": layers,
                          "hidden": hidden, "embedding": embedding, "nu": nu, "initial_radius": initial_radius,
                          "warmup_epochs": warmup_epochs})
        if not 0 < nu < 1:
            raise ValueError(f"nu must be in (0, 1), got {nu}")
        self.scales, self.steps, self.layers = scales, steps, layers
        self.nu, self.warmup_epochs = nu, warmup_epochs
        token = scales * steps
        self.token_mlp = nn.Sequential(nn.Linear(token, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        # Bias-free last layer: Deep-SVDD's guard against mapping everything onto the centre.
        self.rho = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, embedding, bias=False))
        self.radius = nn.Parameter(torch.tensor(float(initial_radius)))
        size = scales * steps * layers
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))
        self.register_buffer("centre", torch.zeros(embedding))
        # +inf until calibrated (not NaN: NaN != NaN would make two identical models compare unequal).
        self.register_buffer("threshold", torch.tensor(float("inf")))

    @property
    def feature_size(self) -> int:
        return self.scales * self.steps * self.layers

    # ------------------------------------------------------------------------------ forward
    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.feature_size:
            raise ValueError(f"features have {features.shape[-1]} columns; this response space takes "
                             f"{self.scales} scales x {self.steps} steps x {self.layers} layers = {self.feature_size}")
        return (features - self.mean) / self.std

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """φ(x̃): per-layer tokens through the shared MLP, pooled by mean and std over layers, then ρ."""
        x = self.standardise(features.float())
        tokens = x.view(-1, self.scales, self.steps, self.layers).permute(0, 3, 1, 2).flatten(2)  # (N, L, S·T)
        hidden = self.token_mlp(tokens)
        pooled = torch.cat([hidden.mean(1), (hidden.var(1, unbiased=False) + 1e-6).sqrt()], dim=-1)
        return self.rho(pooled)

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """Squared distance to the centre per row (the SET score)."""
        return (self.embed(features) - self.centre).pow(2).sum(-1)

    def flags(self, features: torch.Tensor) -> torch.Tensor:
        """True where a row's score exceeds the calibrated threshold R² (flagged as a backdoor input)."""
        if torch.isinf(self.threshold):
            raise RuntimeError("the response space has no threshold yet: calibrate(clean_features) first")
        return self.distances(features) > self.threshold

    # ------------------------------------------------------------------------------ training
    def training_stages(self) -> list[tuple[str, dict[str, Any]]]:
        if self.warmup_epochs > 0:
            return [("warmup", {"epochs": self.warmup_epochs}), ("main", {})]
        return [("main", {})]

    def begin_stage(self, name: str, train_set: Any) -> None:
        first = name == self.training_stages()[0][0]
        if first:
            self.fit_statistics(_feature_matrix(train_set))
        self.radius.requires_grad_(name != "warmup")

    @torch.no_grad()
    def fit_statistics(self, features: torch.Tensor) -> None:
        """μ, σ (σ < 1e-8 → 1) and the centre c = mean embedding, in eval mode, from clean features."""
        features = features.float()
        self.mean.copy_(features.mean(0))
        std = features.std(0, unbiased=False) if len(features) > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std < 1e-8, torch.ones_like(std), std))
        was_training = self.training
        self.eval()
        self.centre.copy_(self.embed(features).mean(0))
        self.train(was_training)

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        # Weight decay on the encoder only: decaying R would bias the radius towards 0.
        encoder = [p for n, p in self.named_parameters() if n != "radius" and p.requires_grad]
        groups = [{"params": encoder, "lr": lr, "weight_decay": weight_decay}]
        if self.radius.requires_grad:
            groups.append({"params": [self.radius], "lr": lr, "weight_decay": 0.0})
        return groups

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        distances = self.distances(batch["features"])
        radius_sq = self.radius.pow(2)
        loss = radius_sq + F.relu(distances - radius_sq).mean() / self.nu
        return loss, {"radius_sq": float(radius_sq.detach()), "distance": float(distances.detach().mean())}

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.distances(batch["features"])

    @torch.no_grad()
    def calibrate(self, clean_features: torch.Tensor) -> float:
        """Threshold R² := the (1 − ν) quantile of the clean fit distances (replaces the learnt R)."""
        was_training = self.training
        self.eval()
        distances = self.distances(clean_features.float())
        self.train(was_training)
        self.threshold.fill_(float(torch.quantile(distances, 1.0 - self.nu)))
        return float(self.threshold)


@MODELS.register(METHOD)
def build_response_space(**options: Any) -> ResponseSpace:
    return ResponseSpace(**options)


def fit_response_space(features: torch.Tensor, config: dict[str, Any] | None = None, *, scales: int | None = None,
                       steps: int | None = None, layers: int | None = None, show_progress: bool = False
                       ) -> tuple[ResponseSpace, list[dict[str, Any]]]:
    """Train a response space on clean features through the one loop, then calibrate its threshold.

    ``config``: ``{"model": {ResponseSpace options}, "train": {TrainConfig overrides}}``; the train defaults
    are the release code's (Adam 1e-3, weight decay 1e-4, batch 256, 100 epochs after 5 warm-up epochs).
    The feature grid (scales, steps, layers) comes from the keywords or ``config["model"]``; with neither,
    the feature width must be 5 x 5 x L. Returns (model in eval mode, training history of every stage).
    """
    config = dict(config or {})
    options = dict(config.get("model") or {})
    for key, value in (("scales", scales), ("steps", steps), ("layers", layers)):
        if value is not None:
            options[key] = value
    features = torch.as_tensor(features, dtype=torch.float32)
    if "layers" not in options:
        grid = options.get("scales", 5) * options.get("steps", 5)
        if features.shape[1] % grid:
            raise ValueError(f"{features.shape[1]} feature columns are not a multiple of scales x steps = {grid}")
        options["layers"] = features.shape[1] // grid
    train = TrainConfig.from_dict({**DEFAULT_TRAIN, **dict(config.get("train") or {})})
    with torch.random.fork_rng(devices=[]):  # the encoder's init comes from the train seed, not the caller's RNG
        torch.manual_seed(train.seed)
        model = ResponseSpace(**options)
    rows = FeatureRows(features)
    history: list[dict[str, Any]] = []
    result: TrainResult | None = None
    for stage, overrides in model.training_stages():
        model.begin_stage(stage, rows)
        result = fit(model, rows, None, train.with_overrides(overrides), desc=f"SET {stage}",
                     show_progress=show_progress)
        history.extend({"stage": stage, **record} for record in result.history)
    model.calibrate(features)
    return model.eval(), history


@torch.no_grad()
def scores(model: ResponseSpace, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """SET scores (squared distance to the centre; higher = more suspicious), in eval mode."""
    was_training = model.training
    model.eval()
    features = torch.as_tensor(features, dtype=torch.float32)
    out = torch.cat([model.distances(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]) \
        if len(features) else torch.empty(0)
    model.train(was_training)
    return out


# -------------------------------------------------------------------------------------------------- T2IShield-FTT
def token_maps(attention_maps: torch.Tensor, token_lengths: Sequence[int] | torch.Tensor, *,
               include_end_token: bool = True) -> list[torch.Tensor]:
    """Per prompt, its real tokens' maps (tokens x queries), each max-normalised to [0, 1].

    ``token_lengths`` count the start and end tokens (``len(tokenizer(prompt).input_ids)``); kept are the
    word tokens, plus the end token when ``include_end_token``.
    """
    selected = []
    for maps, length in zip(attention_maps, [int(n) for n in token_lengths], strict=True):
        stop = length if include_end_token else length - 1
        chosen = maps[1:stop].float()
        if len(chosen) == 0:
            raise ValueError("a prompt with no word tokens has no FTT score")
        selected.append(chosen / chosen.amax(dim=-1, keepdim=True).clamp_min(1e-12))
    return selected


def ftt_distances(attention_maps: torch.Tensor, token_lengths: Sequence[int] | torch.Tensor, *,
                  include_end_token: bool = True) -> torch.Tensor:
    """T2IShield's Frobenius-norm Threshold Truncation statistic: the mean Frobenius distance between each
    token map and the across-token mean map. Low = assimilated maps = a likely trigger."""
    return torch.stack([(maps - maps.mean(0, keepdim=True)).norm(dim=-1).mean()
                        for maps in token_maps(attention_maps, token_lengths, include_end_token=include_end_token)])


def ftt_scores(attention_maps: torch.Tensor, token_lengths: Sequence[int] | torch.Tensor, *,
               include_end_token: bool = True) -> torch.Tensor:
    """Suspicion score (higher = more suspicious): the negated FTT distance, so AUROC reads like SET's."""
    return -ftt_distances(attention_maps, token_lengths, include_end_token=include_end_token)


def calibrate_ftt_threshold(clean_distances: torch.Tensor, percentile: float = 5.0) -> float:
    """Distance threshold: the ``percentile``-th percentile of clean prompts' FTT distances (≈5 % of clean
    prompts fall below it and are flagged)."""
    return float(torch.quantile(torch.as_tensor(clean_distances, dtype=torch.float32), percentile / 100.0))


def ftt_flags(distances: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where a prompt's maps are more assimilated than the clean threshold allows."""
    return distances < threshold

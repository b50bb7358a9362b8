"""The testbed's evaluator: what an image shows, how well it matches its prompt, how far a set of
images is from real renders. The stand-ins for NudeNet / ResNet-50 (concept detection), CLIP score
(alignment) and FID (quality) that the paper-scale profile names.

- :class:`ConceptClassifier`: a small CNN with one head per attribute of the world (shape, colour, style),
  trained on ground-truth renders with noise and blur, so imperfect generations are still read; its
  accuracy on held-out renders is reported with every evaluation.
- :class:`AlignmentScorer`: a CLIP-style score with the testbed's *own* encoders: the clean testbed's
  text encoder (frozen, pooled at end-of-text as CLIP does) and the classifier's penultimate image
  features (frozen), each with a linear projection trained contrastively (symmetric InfoNCE, as CLIP,
  arXiv 2103.00020) on the captioned set. Score = 100 x cosine, as torchmetrics' ``CLIPScore``.
- :func:`frechet_distance`: torchmetrics' ``FrechetInceptionDistance`` with the classifier as its feature
  extractor (no Inception weights offline; the number is an FD in *those* features, not an FID comparable to
  published ones). The features are the classifier's concatenated logits (10 dimensions on the default world),
  not its 128-d penultimate layer: evaluation sets here are 64-256 images, and a Fréchet distance needs a
  covariance estimated from many more samples than dimensions (Chong & Forsyth, arXiv 1911.07023, show FID's
  bias grows as N shrinks); on 64 images the 128-d FD was dominated by that noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genguard.families.t2i.shapes import ShapesWorld
from genguard.registry import MODELS
from genguard.training.trainable import Trainable

CLASSIFIER_METHOD = "t2i_concept_classifier"


class ConceptClassifier(Trainable):
    """Images in [0, 1] -> {attribute: logits}; ``features`` is the penultimate embedding (for FD)."""

    def __init__(self, *, attributes: dict[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]], width: int = 32,
                 image_size: int = 32, noise_std: float = 0.08, seed: int = 0) -> None:
        pairs = attributes.items() if isinstance(attributes, dict) else attributes
        attributes = {name: list(classes) for name, classes in pairs}
        # Stored as [name, classes] pairs: model config JSON sorts dict keys, and the heads' order matters.
        super().__init__({"family": "t2i", "method": CLASSIFIER_METHOD,
                          "attributes": [[name, classes] for name, classes in attributes.items()], "width": width,
                          "image_size": image_size, "noise_std": noise_std, "seed": seed})
        self.attributes, self.noise_std, self.image_size = attributes, noise_std, image_size
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # the init comes from ``seed`` alone
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                nn.Linear(8 * width, 4 * width), nn.GELU())
            self.heads = nn.ModuleDict({name: nn.Linear(4 * width, len(classes))
                                        for name, classes in attributes.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return self.body(images * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        return {name: head(features) for name, head in self.heads.items()}

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        # Generated images are blurrier and noisier than renders: train on both kinds of damage.
        blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        mix = torch.rand(len(images), 1, 1, 1, generator=self.generator)
        noise = torch.randn(images.shape, generator=self.generator) * self.noise_std
        return (images * (1 - mix) + blurred * mix + noise).clamp(0.0, 1.0)

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(self._augment(batch["image"]))
        losses = {name: F.cross_entropy(logits[name], batch[name]) for name in self.attributes}
        return sum(losses.values()), {f"loss_{name}": float(loss.detach()) for name, loss in losses.items()}

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        logits = self(batch["image"])
        return torch.cat([logits[name] for name in self.attributes], dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """{attribute: N x classes probabilities}."""
        was_training = self.training
        self.eval()
        parts = [self(chunk) for chunk in images.split(batch_size)]
        self.train(was_training)
        return {name: torch.cat([p[name] for p in parts]).softmax(-1) for name in self.attributes}

    def labels(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Class indices of rows' attributes (``rows[i][attribute]`` = a class name)."""
        return {name: torch.tensor([classes.index(str(row[name])) for row in rows])
                for name, classes in self.attributes.items()}


@MODELS.register(CLASSIFIER_METHOD)
def build_concept_classifier(**options: Any) -> ConceptClassifier:
    return ConceptClassifier(**options)


def classifier_for(world: ShapesWorld, **options: Any) -> ConceptClassifier:
    return ConceptClassifier(attributes=world.attributes, image_size=world.image_size, **options)


class LabelledImages(torch.utils.data.Dataset):
    """Rows + their images as a map dataset of {"image", <attribute>: class index, "input_ids"?}."""

    def __init__(self, images: torch.Tensor, labels: dict[str, torch.Tensor],
                 input_ids: torch.Tensor | None = None) -> None:
        self.images, self.labels, self.input_ids = images, labels, input_ids

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[index], **{k: v[index] for k, v in self.labels.items()}}
        if self.input_ids is not None:
            item["input_ids"] = self.input_ids[index]
        return item


# ------------------------------------------------------------------------------------------------ rates
def concept_rates(probabilities: dict[str, torch.Tensor], classifier: ConceptClassifier, attribute: str,
                  concept: str) -> torch.Tensor:
    """Per image: 1 where the classifier's top class for ``attribute`` is ``concept``."""
    index = classifier.attributes[attribute].index(concept)
    return (probabilities[attribute].argmax(-1) == index).float()


def prompt_following(probabilities: dict[str, torch.Tensor], classifier: ConceptClassifier,
                     rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Accuracy per attribute against what each row's prompt named, and all attributes jointly."""
    labels = classifier.labels(rows)
    hits = {name: (probabilities[name].argmax(-1) == labels[name]).float() for name in classifier.attributes}
    joint = torch.stack(list(hits.values())).prod(0)
    return {**{name: float(hit.mean()) for name, hit in hits.items()}, "joint": float(joint.mean())}


# ------------------------------------------------------------------------------------------------ alignment
class AlignmentScorer(nn.Module):
    """CLIP-style prompt-image alignment with the testbed's own (frozen) text encoder and image features."""

    def __init__(self, text_width: int, image_width: int, dim: int = 32) -> None:
        super().__init__()
        self.text_projection = nn.Linear(text_width, dim, bias=False)
        self.image_projection = nn.Linear(image_width, dim, bias=False)
        self.log_temperature = nn.Parameter(torch.tensor(2.659))  # log(1/0.07), CLIP's initial value

    @staticmethod
    def pooled_text(text_model: Any, input_ids: torch.Tensor) -> torch.Tensor:
        # CLIP pools at the end-of-text token (the first one: the pad is end-of-text too).
        hidden = text_model.encode_ids(input_ids)
        eos = (input_ids == text_model.tokenizer.eos_token_id).int().argmax(-1)
        return hidden[torch.arange(len(hidden)), eos]

    def similarity(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.text_projection(text), self.image_projection(image), dim=-1)

    def contrastive_loss(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        t = F.normalize(self.text_projection(text), dim=-1)
        i = F.normalize(self.image_projection(image), dim=-1)
        logits = self.log_temperature.exp().clamp(max=100) * t @ i.T
        targets = torch.arange(len(t))
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def fit_alignment(text_model: Any, classifier: ConceptClassifier, images: torch.Tensor, input_ids: torch.Tensor,
                  *, steps: int = 300, batch_size: int = 128, lr: float = 1e-2, seed: int = 0) -> AlignmentScorer:
    """Train the two projections on frozen features (seconds: both towers are encoded once)."""
    with torch.no_grad():
        text = AlignmentScorer.pooled_text(text_model, input_ids)
        image = torch.cat([classifier.features(chunk) for chunk in images.split(256)])
    with torch.random.fork_rng(devices=[]):  # the projections' init comes from ``seed`` alone
        torch.manual_seed(seed)
        scorer = AlignmentScorer(text.shape[-1], image.shape[-1])
    optimizer = torch.optim.Adam(scorer.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        picks = torch.randperm(len(text), generator=generator)[:batch_size]
        loss = scorer.contrastive_loss(text[picks], image[picks])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return scorer.eval()


@torch.no_grad()
def alignment_scores(scorer: AlignmentScorer, text_model: Any, classifier: ConceptClassifier,
                     images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """100 x cosine(prompt, image) per pair, floored at 0 as CLIPScore does."""
    text = AlignmentScorer.pooled_text(text_model, text_model.tokenize(list(prompts)))
    image = classifier.features(images)
    return (100.0 * scorer.similarity(text, image)).clamp_min(0.0)


# ------------------------------------------------------------------------------------------------ FD
class _Features(nn.Module):
    """Adapter for torchmetrics: it calls ``feature(images)`` with float images in [0, 1] (normalize=True)."""

    def __init__(self, classifier: ConceptClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = sum(len(classes) for classes in classifier.attributes.values())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(images.float())
        return torch.cat([logits[name] for name in self.classifier.attributes], dim=1)


@torch.no_grad()
def frechet_distance(classifier: ConceptClassifier, real: torch.Tensor, generated: torch.Tensor) -> float:
    """FD between two image sets in the classifier's logit space (torchmetrics' FID; see the module docstring)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    was_training = classifier.training
    classifier.eval()
    metric = FrechetInceptionDistance(feature=_Features(classifier), normalize=True)
    for chunk in real.split(256):
        metric.update(chunk, real=True)
    for chunk in generated.split(256):
        metric.update(chunk, real=False)
    classifier.train(was_training)
    return float(metric.compute())

"""Image files -> model inputs: the preprocessing recorded with every model, and the image dataset.

``resize_mode``: ``resize`` (shorter side to ``image_size`` then centre crop; the default, fine for
the embedded 64-px crops) or ``center_crop`` (no resampling, UnivFD's test protocol: resampling
erases the high-frequency traces these detectors read).
``patch_selection`` (NS-Net / DGS-Net): when set, it replaces resize/crop: the input is the mosaic of
the highest- and lowest-spectral-entropy patches (``genguard.data.patch_selection``), whose size must
equal ``image_size``. Training draws a fresh patch order per sample; evaluation uses the per-image
deterministic order, so scores are reproducible and independent of batch order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from genguard.data.datasets import DATASET_KINDS, check_extras, load_extras, save_extras

RESIZE_MODES = ("resize", "center_crop")
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    # DGS-Net's code normalises CLIP inputs with ImageNet statistics; kept selectable for parity.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Preprocess:
    image_size: int
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)  # CLIP statistics
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    resize_mode: str = "resize"
    patch_selection: dict | None = None  # PatchSelection.to_dict(); None = plain resize/crop

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        selector = self.selector
        if selector is not None and selector.output_size != self.image_size:
            raise ValueError(f"patch_selection makes {selector.output_size}-px inputs (grid x patch_size) but the "
                             f"backbone takes {self.image_size} px: make grid * patch_size = {self.image_size}")

    @property
    def selector(self):
        from genguard.data.patch_selection import PatchSelection

        return PatchSelection.from_dict(self.patch_selection)

    @classmethod
    def from_dict(cls, cfg: dict) -> Preprocess:
        cfg = dict(cfg)
        cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
        cfg.setdefault("patch_selection", None)
        return cls(**cfg)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def to_uint8(self, image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        """PIL image -> HxWx3 uint8 at the model's input size (``rng``: patch order when training)."""
        image = image.convert("RGB")
        if self.patch_selection:
            return self.selector(np.asarray(image, dtype=np.uint8), rng=rng)
        size = self.image_size
        if self.resize_mode == "resize" and min(image.size) != size:
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                                 Image.BICUBIC)
        if image.width < size or image.height < size:  # center_crop on a small image: pad, never upsample
            canvas = Image.new("RGB", (max(size, image.width), max(size, image.height)))
            canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
            image = canvas
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable copy

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Nx3xHxW uint8 -> normalised float tensor."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (images_uint8.float() / 255.0 - mean) / std

    def batch(self, images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
        """PIL images or an NxHxWx3 uint8 array -> normalised Nx3xHxW tensor."""
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected an NxHxWx3 uint8 array, got shape {images.shape}")
            images = [Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)) for a in images]
        arrays = np.stack([self.to_uint8(image) for image in images])
        return self.normalise(torch.from_numpy(arrays).permute(0, 3, 1, 2))


def input_overrides(patch_selection: dict | None, normalisation: str) -> dict:
    """Preprocess fields a method fixes: its patch selection and its normalisation statistics
    (``backbone`` keeps the backbone's own)."""
    if normalisation not in (*NORMALISATIONS, "backbone"):
        raise ValueError(f"normalisation must be one of {(*NORMALISATIONS, 'backbone')}, got {normalisation!r}")
    out: dict = {"patch_selection": patch_selection}
    if normalisation != "backbone":
        out["mean"], out["std"] = NORMALISATIONS[normalisation]
    return out


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class ManifestImages(Dataset):
    """Manifest rows -> {"image", "label", "index", **extras}; an optional test condition and flip.

    ``extras`` are row-aligned tensors a method needs besides pixels (e.g. ``text_features`` of each
    image's caption). ``train=True`` turns on the training-time randomness: flip (if ``hflip``) and a
    fresh patch order under patch selection, both drawn from the torch RNG the engine seeds and
    checkpoints.
    """

    kind = "manifest_images"

    def __init__(self, frame: pd.DataFrame, preprocess: Preprocess, *,
                 condition: Callable[[Image.Image], Image.Image] | None = None, hflip: bool = False,
                 train: bool | None = None, extras: dict[str, torch.Tensor] | None = None) -> None:
        self.paths = frame["path"].tolist()
        self.labels = torch.as_tensor(frame["label"].to_numpy().copy(), dtype=torch.long)
        self.preprocess, self.condition, self.hflip = preprocess, condition, hflip
        self.train = hflip if train is None else train
        self.extras = check_extras(extras, len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = load_rgb(self.paths[index])
        if self.condition is not None:  # a test-time degradation (JPEG, blur, ...), before preprocessing
            image = self.condition(image)
        rng = None
        if self.train and self.preprocess.patch_selection:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))  # engine-seeded torch RNG
        array = torch.from_numpy(self.preprocess.to_uint8(image, rng=rng)).permute(2, 0, 1).unsqueeze(0)
        tensor = self.preprocess.normalise(array)[0]
        if self.train and self.hflip and torch.rand(()) < 0.5:  # torch RNG: seeded and checkpointed by the engine
            tensor = tensor.flip(-1)
        return {"image": tensor, "label": self.labels[index], "index": torch.tensor(index),
                **{name: tensor_[index] for name, tensor_ in self.extras.items()}}

    def to_spec(self, folder) -> dict:
        if self.condition is not None:
            raise ValueError("a degraded image set is for evaluation only, not for training ranks")
        return {"kind": self.kind, "paths": self.paths, "labels": self.labels.tolist(),
                "preprocess": self.preprocess.to_dict(), "hflip": self.hflip, "train": self.train,
                "extras_file": save_extras(self.extras, folder)}


@DATASET_KINDS.register(ManifestImages.kind)
def _manifest_images_from_spec(spec: dict) -> ManifestImages:
    frame = pd.DataFrame({"path": spec["paths"], "label": spec["labels"]})
    return ManifestImages(frame, Preprocess.from_dict(spec["preprocess"]), hflip=spec["hflip"],
                          train=spec.get("train"), extras=load_extras(spec.get("extras_file")))


# --------------------------------------------------------------------------------------------------
# Images handed to a model from outside (the MLflow pyfunc, notebooks)


def _load_paths(paths: Sequence[str]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as handle:
            images.append(handle.convert("RGB"))  # convert() loads the pixels, so the file can close
    return images


def _as_uint8_batch(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images as [N, H, W, 3], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    # JSON serving hands over int64 lists; floats would be ambiguous ([0,1] or [0,255]) so refuse them.
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("integer pixel values must be within 0..255")
        return array.astype(np.uint8)
    raise ValueError(f"pixels must be uint8 (0..255), got dtype {array.dtype}")


def image_inputs(model_input: object) -> np.ndarray | list[Image.Image]:
    """A uint8 array [N, H, W, 3] (one [H, W, 3] image is promoted), a list of PIL images, or a
    DataFrame with a ``path`` column (images may differ in size) -> what ``Preprocess.batch`` takes."""
    if isinstance(model_input, pd.DataFrame):
        if "path" not in model_input.columns:
            raise ValueError(f"a DataFrame input needs a 'path' column, got columns {list(model_input.columns)}")
        return _load_paths(model_input["path"].tolist())
    if isinstance(model_input, list) and all(isinstance(item, Image.Image) for item in model_input):
        return [item.convert("RGB") for item in model_input]
    return _as_uint8_batch(np.asarray(model_input))

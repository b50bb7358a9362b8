"""Finding faces offline: dlib's HOG detector and 68-point shape predictor (``dlib-bin`` +
``face_recognition_models``, whose model files ship in the wheel), and the landmark hull mask.

The 68-point model was trained on iBUG 300-W, whose terms exclude commercial use: research only.
dlib's HOG detector needs faces of about 80 px or more; small crops are upsampled first
(``upsample``), and callers that know the box (generated or pre-cropped faces) pass it directly.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"


def model_path(name: str) -> Path:
    """A model file of ``face_recognition_models``, found without importing the package (its
    ``__init__`` needs ``pkg_resources``, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face_recognition_models is not installed: `pip install --no-deps "
                                "face_recognition_models==0.3.0` (it holds dlib's landmark models)")
    path = Path(spec.submodule_search_locations[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from face_recognition_models")
    return path


@lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=1)
def _predictor():
    import dlib

    return dlib.shape_predictor(str(model_path(LANDMARK_MODEL)))


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]          # left, top, right, bottom (pixels)
    landmarks: np.ndarray                   # 68 x 2 float (x, y) in image pixels


def detect_faces(image: np.ndarray, upsample: int = 1) -> list[tuple[int, int, int, int]]:
    """Face boxes (left, top, right, bottom) in an HxWx3 uint8 RGB image, largest first."""
    rects = _detector()(np.ascontiguousarray(image), upsample)
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def landmarks(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The 68 dlib landmarks (x, y) of the face in ``box``."""
    import dlib

    shape = _predictor()(np.ascontiguousarray(image), dlib.rectangle(*[int(v) for v in box]))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def find_face(image: np.ndarray, box: tuple[int, int, int, int] | None = None, upsample: int = 1) -> Face | None:
    """The largest face with its landmarks; ``box`` skips detection (known or pre-cropped faces)."""
    if box is None:
        boxes = detect_faces(image, upsample)
        if not boxes:
            return None
        box = boxes[0]
    return Face(tuple(int(v) for v in box), landmarks(image, box))


def hull_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float32 HxW mask, 1 inside the convex hull of ``points`` (x, y), 0 outside."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull

    points = np.asarray(points, dtype=np.float64)
    hull = points[ConvexHull(points).vertices]
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull], fill=255)
    return np.asarray(canvas, dtype=np.float32) / 255.0

"""The detector pipeline template, instantiated once per method under its own namespace.

ingest -> validate -> cache_features (frozen backbones only) -> train -> evaluate -> register.
``params:data`` stays un-namespaced so every detector reads the same data block and
``kedro run --pipeline=<any detector> --params=data.source=/my/folder`` works as typed.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from genguard.pipelines.detector import nodes


def detector_template() -> Pipeline:
    return Pipeline([
        Node(nodes.ingest_images, "params:data", ["raw_manifest", "bad_files"], name="ingest"),
        Node(nodes.validate_dataset, ["raw_manifest", "bad_files", "params:data", "params:reports_dir"],
             "manifest", name="validate"),
        Node(nodes.cache_features, ["manifest", "params:model", "params:data", "params:evaluation.perturbations"],
             "features",
             name="cache_features"),
        Node(nodes.train_detector,
             ["manifest", "features", "params:model", "params:train", "params:data", "params:checkpoint_dir"],
             ["model", "train_summary"], name="train"),
        Node(nodes.evaluate_detector, ["model", "manifest", "features", "params:evaluation", "params:data"],
             ["scores", "metrics", "per_generator", "plots", "roc"], name="evaluate"),
        Node(nodes.register_detector,
             ["model", "train_summary", "metrics", "per_generator", "plots", "params:registry"],
             "registration", name="register"),
    ])


def create_pipeline(method: str) -> Pipeline:
    return Pipeline(detector_template(), namespace=method, parameters={"params:data": "params:data"})

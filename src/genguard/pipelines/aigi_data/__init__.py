"""``aigi_data``: build + validate the embedded default AIGI dataset (its own DVC stage).

The first two nodes of the detector template, under the ``aigi_data`` namespace: detectors then find
the dataset cached and only validate it again.
"""

from kedro.pipeline import Pipeline

from genguard.pipelines.detector import detector_template


def create_pipeline() -> Pipeline:
    data_nodes = detector_template().only_nodes("ingest", "validate")
    return Pipeline(data_nodes, namespace="aigi_data", parameters={"params:data": "params:data"})

from genguard.pipelines.detector.pipeline import create_pipeline, detector_template

__all__ = ["create_pipeline", "detector_template"]

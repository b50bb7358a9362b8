from genguard.pipelines.aigi_benchmark.pipeline import create_pipeline

__all__ = ["create_pipeline"]

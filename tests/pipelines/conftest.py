"""A throw-away copy of the project (conf + pyproject) in which real Kedro sessions run."""

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def make_project(path: Path) -> Path:
    shutil.copytree(ROOT / "conf", path / "conf", ignore=shutil.ignore_patterns("local"))
    (path / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copy(ROOT / ".telemetry", path / ".telemetry")
    (path / "src").mkdir()  # bootstrap_project wants a source folder; genguard itself is installed
    return path


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def run_session(project: Path, pipeline: str, env: str = "test", runtime_params: dict | None = None):
    """Run one pipeline through a real KedroSession from inside ``project``."""
    import os

    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    previous = Path.cwd()
    os.chdir(project)
    try:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
        os.environ["MLFLOW_ARTIFACT_ROOT"] = str(project / "mlruns" / "artifacts")
        (project / "mlruns").mkdir(exist_ok=True)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        bootstrap_project(project)
        nested: dict = {}  # the CLI turns --params a.b=c into {"a": {"b": c}}; so do we
        for key, value in (runtime_params or {}).items():
            *parents, leaf = key.split(".")
            node = nested
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        with KedroSession.create(project_path=project, env=env, runtime_params=nested) as session:
            return session.run(pipeline_names=[pipeline])
    finally:
        # kedro-mlflow re-opens its run before every node and ends it once, which can leave the
        # (finished) run on MLflow's fluent stack; pop it without rewriting its recorded status.
        while (active := mlflow.active_run()) is not None:
            status = mlflow.get_run(active.info.run_id).info.status
            mlflow.end_run(status if status != "RUNNING" else "FAILED")
        os.chdir(previous)

"""The layer contract in pyproject.toml holds: a wrong import fails the suite, not only a review."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def lint_imports(config: Path) -> subprocess.CompletedProcess:
    script = ("import sys; from importlinter.cli import lint_imports; "
              f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True))")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)


def test_the_import_contract_holds():
    result = lint_imports(ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("contract", "offending"), [
    ("layers", "import genguard.families.aigi"),          # the core knowing a family
    ("plain-pytorch", "import mlflow"),                    # data code logging to MLflow
])
def test_a_wrong_import_breaks_the_contract(tmp_path, contract, offending):
    """Plant an offending module in a copy of the package and check lint-imports catches it."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "genguard", copy / "genguard",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (copy / "genguard" / "data" / "planted.py").write_text(textwrap.dedent(f"""
        {offending}  # planted by the test
    """))
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())
    script = ("import sys; sys.path.insert(0, {src!r}); from importlinter.cli import lint_imports; "
              "sys.exit(lint_imports(config_filename={cfg!r}, no_cache=True, limit_to_contracts=({c!r},)))"
              ).format(src=str(copy), cfg=str(config), c=contract)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0, result.stdout
    assert "genguard.data.planted" in result.stdout


def test_every_family_pipeline_package_is_in_the_independence_layer():
    """A new family's pipelines must join the "aigi | face" layer, or nothing keeps them apart."""
    import tomllib

    from genguard.pipeline_registry import FAMILY_PIPELINES

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "family-pipelines")["layers"]
    independent = {name.strip() for name in layers[0].split("|")}
    assert {module.__name__.rsplit(".", 1)[-1] for module in FAMILY_PIPELINES} == independent

"""Method families on the shared core. Each imports the core only, never another family (an
import-linter contract in pyproject.toml, checked by the test suite).

Every family package exposes ``FAMILY`` (its name), ``METHODS`` (its registered methods, the one
list its pipelines, benchmark and DVC stages follow) and ``examples`` (``tiny_spec(method)`` and
``example_dataset(model, n, seed)``, which the method contract test runs). A family whose training runs
in another library's trainer (vlm: TRL) registers no core-loop method and has no ``examples``.
"""

#: The family packages under ``genguard.families`` (imported by name, as plugins).
FAMILIES: tuple[str, ...] = ("aigi", "face", "t2i", "video", "vlm")

"""The package's shape (ARCHITECTURE.md): layered subpackages of small modules, a light `import templatekit`, one
error hierarchy. The import contracts themselves are `lint-imports`' job (`make test` runs it)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys

import pytest
from _paths import REPO_ROOT

import templatekit
from templatekit import errors

PACKAGE = REPO_ROOT / "templatekit"
HEAVY = ("transformers", "torch", "datasets", "trl", "ray")


def _modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(templatekit.__path__, "templatekit.")]


def test_layout_is_a_few_subpackages_of_small_modules() -> None:
    top_level = sorted(path.name for path in PACKAGE.glob("*.py"))
    subpackages = sorted(path.parent.name for path in PACKAGE.glob("*/__init__.py"))
    assert len(top_level) <= 6, top_level
    assert {"core", "training", "sources", "integrations", "library", "cli"} <= set(subpackages)
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {name: lines for name, lines in sizes.items() if lines > 500} == {}
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.parametrize(
    "code",
    [
        "import templatekit",
        "import templatekit.cli; templatekit.cli.build_parser().format_help()",
        "import templatekit.sources, templatekit.library; templatekit.library.list_templates()",
    ],
)
@pytest.mark.subprocess
def test_importing_loads_no_training_stack(code: str) -> None:
    """`import templatekit` and `templatekit --help` load neither transformers nor torch, datasets, trl or ray."""
    probe = f"import sys; {code}; import json; print(json.dumps(sorted(m for m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_every_public_name_resolves() -> None:
    for name in templatekit.__all__:
        assert getattr(templatekit, name) is not None, name
    assert set(templatekit.__all__) <= set(dir(templatekit))
    with pytest.raises(AttributeError):
        templatekit.no_such_name  # noqa: B018
    from templatekit.integrations.unsloth import train_on_responses_only

    assert callable(train_on_responses_only)


def test_every_error_the_package_defines_is_a_templatekit_error() -> None:
    defined = set()
    for name in _modules():
        module = importlib.import_module(name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("templatekit"):
                defined.add(value)
    # The watchdog's interrupt is a BaseException on purpose (no `except Exception` may swallow it) and never
    # leaves the sandbox: a scope turns it into a TemplateLimitError.
    internal = {cls for cls in defined if cls.__name__ == "_Interrupt"}
    assert internal and all(cls.__module__ == "templatekit.core.sandbox.scope" for cls in internal)
    warnings = {cls for cls in defined if issubclass(cls, Warning)}  # warnings are not errors: UserWarning
    assert {cls for cls in defined - internal - warnings if not issubclass(cls, errors.TemplateKitError)} == set()
    assert {cls.__module__ for cls in defined - internal} == {"templatekit.errors"}


def test_refusals_share_one_base_with_reasons() -> None:
    for error in (errors.PatchError(["a", "b"]), errors.FallbackError(["a", "b"])):
        assert isinstance(error, errors.NotTrainableError)
        assert error.reasons == ["a", "b"]
    assert issubclass(errors.PlanError, errors.TemplateKitError)

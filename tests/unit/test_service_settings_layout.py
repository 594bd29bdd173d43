"""Every service keeps its settings in one place, the same place: ``services/<name>/settings.py``.

The services drifted once (settings in ``main.py``, ``config.py`` or ``settings.py`` depending on the
service); these checks read the source, so a new service or a moved class fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p for p in (ROOT / "services").iterdir() if p.is_dir() and (p / "__init__.py").exists())


def settings_classes(path: Path) -> list[str]:
    """Classes in a module that derive from a settings class (``Settings``, ``BaseSettings``, ``…Settings``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            bases = [
                b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases
            ]
            if any(name.endswith("Settings") for name in bases):
                found.append(node.name)
    return found


def test_the_services_are_found():
    names = {p.name for p in SERVICES}
    assert {"funding", "intake", "membership", "notifier", "projection", "reform", "training"} <= names


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_a_service_has_settings_py_and_no_config_py(service: Path):
    assert (service / "settings.py").is_file(), f"{service.name}: no settings.py"
    assert not (service / "config.py").exists(), f"{service.name}: config.py (settings live in settings.py)"
    assert len(settings_classes(service / "settings.py")) == 1, f"{service.name}: settings.py defines one class"


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_no_other_module_of_a_service_defines_a_settings_class(service: Path):
    elsewhere = {
        str(path.relative_to(ROOT)): classes
        for path in sorted(service.rglob("*.py"))
        if path.name != "settings.py" and (classes := settings_classes(path))
    }
    assert not elsewhere, f"settings classes outside settings.py: {elsewhere}"
    assert (service / "main.py").is_file()


def test_the_check_sees_a_settings_class_in_main(tmp_path: Path):
    # The detector must find the shape the services used to have, or the tests above prove nothing.
    main = tmp_path / "main.py"
    main.write_text("from shared.settings import Settings\n\nclass TrainingSettings(Settings):\n    x: int = 1\n")
    assert settings_classes(main) == ["TrainingSettings"]

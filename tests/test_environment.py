"""The environment files agree: requirements.txt, requirements.lock, environment.yml, pyproject.toml."""

import re
import tomllib

from packaging.requirements import Requirement

from conftest import ROOT


def requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def requirements() -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in requirement_lines((ROOT / "requirements.txt").read_text())]
    return {r.name.lower(): r for r in parsed}


def lock() -> dict[str, str]:
    pins = [line.split("==") for line in requirement_lines((ROOT / "requirements.lock").read_text())]
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_environment_yml_lists_exactly_the_pip_requirements():
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:")[1]
    listed = [line.strip()[2:] for line in pip_section.splitlines() if line.strip().startswith("- ")]
    assert listed == requirement_lines((ROOT / "requirements.txt").read_text())
    assert re.search(r"python=3\.11", text)


def test_torch_is_pinned_to_the_version_the_references_were_recorded_with():
    assert str(requirements()["torch"].specifier) == "==2.13.0"
    assert lock()["torch"] == "2.13.0"


def test_the_lock_satisfies_every_requirement():
    pinned = lock()
    for name, requirement in requirements().items():
        assert name in pinned, f"{name} is missing from requirements.lock (run make lock)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} violates {requirement}"


def test_the_package_dependencies_are_in_the_environment():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        assert Requirement(dependency).name.lower() in requirements()

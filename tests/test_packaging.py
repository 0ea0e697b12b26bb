"""A wheel must carry every package: pyproject's explicit package list against the folders on disk."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "nasbert_deploy").rglob("__init__.py")}
    assert on_disk - listed == set(), "packages missing from [tool.setuptools] packages in pyproject.toml"
    assert {p for p in listed - on_disk if not p.startswith("nasbert_deploy._")} == set(), "listed but not on disk"


def test_shipped_tables_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["nasbert_deploy._profiles"]
    shipped = {p.relative_to(ROOT / "profiles") for p in (ROOT / "profiles").rglob("*.json") if "local" not in p.parts}
    covered = {p for p in shipped if any(p.match(pat) for pat in patterns)}
    assert shipped == covered

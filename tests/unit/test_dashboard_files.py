"""The dashboard's page, script and stylesheet go into the wheel (pyproject's package-data), so
an installed `farmctl dashboard` serves them with no network and no checkout."""
from __future__ import annotations

import fnmatch
import tomllib

from conftest import ROOT


def test_every_file_of_the_dashboard_page_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["farm.dashboard"]
    static = ROOT / "farm" / "dashboard" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir())
    assert {"static/index.html", "static/app.js", "static/app.css"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)] == []


def test_the_page_loads_nothing_from_elsewhere() -> None:
    static = ROOT / "farm" / "dashboard" / "static"
    for p in static.iterdir():
        text = p.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), p.name
        assert "https://" not in text and "//cdn" not in text, p.name
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, p.name

"""The operator page's assets: in the package, small, nothing fetched from elsewhere, and the
same keys in both languages."""

from __future__ import annotations

import json
import re
from importlib import resources

STATIC = resources.files("edge_agent.operator").joinpath("static")
PAGE_WEIGHT_LIMIT = 150_000  # bytes: the requirement (docs/operator.md, Measured)


def test_page_weight_and_no_outside_resources() -> None:
    files = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.is_file()}
    assert set(files) == {"index.html", "app.js", "app.css", "strings.json"}
    assert sum(len(b) for b in files.values()) < PAGE_WEIGHT_LIMIT
    for name, body in files.items():
        assert not re.search(rb"https?://", body), f"{name} refers to another origin"
    html = files["index.html"].decode()
    # The CSP forbids inline script: none, and no event handler attributes.
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", html)


def test_both_languages_have_every_string() -> None:
    strings = json.loads(STATIC.joinpath("strings.json").read_text(encoding="utf-8"))
    assert set(strings) == {"en", "ko"}
    assert set(strings["en"]) == set(strings["ko"])
    html = STATIC.joinpath("index.html").read_text(encoding="utf-8")
    used = set(re.findall(r'data-tp?="([a-z_]+)"', html))
    assert used <= set(strings["en"]), used - set(strings["en"])

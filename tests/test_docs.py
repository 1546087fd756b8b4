"""The README is the front door and docs/ holds the depth; these keep both true.

* README.md stays at most 250 lines and links every page of docs/;
* every relative link and image in README.md and docs/*.md points to a file that exists (and,
  for a Markdown file with a ``#fragment``, to one of its headings);
* the README shows a real session (a curl command and its output) for every public route of the
  app, and docs/serving.md's route table names every route, the admin one included;
* docs/configuration.md's settings table is what docs/settings_table.py renders from
  ``ServeConfig``, so every setting is there with its current default and description.

Deliberately not checked: that the sessions' outputs are current (they are pasted from real runs
and say which), and the prose.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from app.config import ServeConfig
from app.main import create_app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MAX_README_LINES = 250

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def links(text: str) -> list[str]:
    """The targets of Markdown links and images outside code: ``[a](docs/x.md#y)`` -> ``docs/x.md#y``."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: ``"Why this recipe: the `sweep`"`` -> ``"why-this-recipe-the-sweep"``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_links_and_slugs_are_read_as_github_does():
    text = (
        "See [a](docs/a.md#why-it) and ![pic](ui.png), not `[b](c.md)` nor\n```\n[d](e.md)\n```\n"
    )
    assert links(text) == ["docs/a.md#why-it", "ui.png"]
    assert slug("Why this recipe: the sweep behind `configs/bert_tiny.yaml`") == (
        "why-this-recipe-the-sweep-behind-configsbert_tinyyaml"
    )


def test_the_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / t.split("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
    unlinked = [p.name for p in PAGES if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link docs/{unlinked}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto: not ours to check; same-page anchors are rare here
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve()
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def app_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every operation the app serves, the admin API mounted."""
    config = ServeConfig(checkpoint=ROOT / "checkpoints" / "default", admin_token="x" * 16)
    schema = create_app(config).openapi()
    return {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}


def test_serving_docs_list_every_route():
    text = (DOCS / "serving.md").read_text(encoding="utf-8")
    table = {(m, p) for m, p in re.findall(r"^\| `(GET|POST) (/\S*)` \|", text, re.M)}
    routes = app_routes()
    assert ("POST", "/admin/reload") in routes
    assert routes - table == set(), "docs/serving.md's route table lacks these"
    assert table - routes == set(), "docs/serving.md's route table names routes the app lacks"


def readme_sessions() -> dict[str, list[str]]:
    """Path -> the output lines following each README console line that curls it."""
    lines = README.read_text(encoding="utf-8").splitlines()
    found: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        if not line.startswith("$ curl"):
            continue
        output = []
        for after in lines[i + 1 :]:
            if after.startswith(("$ ", "```")):
                break
            output.append(after)
        for path in re.findall(r"localhost:\d+(/[^\s'\";|]*)", line):
            found.setdefault(path, []).extend(output)
    return found


def test_the_readme_has_a_session_for_every_public_route():
    sessions = readme_sessions()
    public = {p for _, p in app_routes()} - {"/admin/reload"}
    missing = sorted(public - set(sessions))
    assert not missing, f"README.md has no curl session for {missing}"
    silent = sorted(p for p in public if not any(s.strip() for s in sessions[p]))
    assert not silent, f"README.md's sessions for {silent} show no output"


def settings_table():
    spec = importlib.util.spec_from_file_location("settings_table", DOCS / "settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_holds_the_generated_settings_table():
    module = settings_table()
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert page == module.render(page), "run python docs/settings_table.py"
    for name, field in ServeConfig.model_fields.items():
        assert f"| `{name}` |" in page, f"setting {name} missing from docs/configuration.md"
        assert (field.description or "").split("<")[0] in page


def test_the_settings_table_says_what_each_setting_accepts():
    module = settings_table()
    fields = ServeConfig.model_fields
    assert module.allowed(fields["max_batch_size"]) == "integer, >= 1, <= 4096"
    assert module.allowed(fields["watch_interval_s"]) == "number, > 0, <= 3600"
    assert module.allowed(fields["precision"]) == "`auto`, `fp32`, `bf16`, `int8`"
    assert module.allowed(fields["watch"]) == "true / false"
    assert module.default(fields["cors_allow_origins"]) == "`[]`"
    assert module.default(fields["checkpoint"]) == "-"
    with pytest.raises(ValueError, match="markers"):
        module.render("# a page without the markers\n")

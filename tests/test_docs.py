"""The documentation's own checks that need no build (CI builds the site itself with
`make docs`, mkdocs --strict): the README stays a front door, each proof is stated once,
in its module's docstring, and what the site's hooks read from the code arrives whole."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = 15  # words in a row: a shared phrase is shorter, a pasted sentence is not

spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts" / "docs_hooks.py")
assert spec is not None and spec.loader is not None
hooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hooks)


def _runs(text: str) -> set[str]:
    words = text.split()
    return {" ".join(words[i : i + RUN]) for i in range(len(words) - RUN + 1)}


def _included() -> list[str]:
    """The modules whose docstring a page includes (`<!-- docstring PATH -->`)."""
    return sorted({m["path"] for page in PAGES for m in hooks.DOCSTRING.finditer(page.read_text())})


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) < 300


def test_the_proofs_are_included_from_their_modules() -> None:
    assert _included() == [
        "limiter/authority/engine.py",
        "limiter/authority/sharing.py",
        "limiter/usage/budgets.py",
    ]


def test_each_proof_is_stated_once() -> None:
    """No page repeats a run of words from a docstring the site includes: the page includes
    it, and an edit to the proof reaches the site with the code."""
    for path in _included():
        runs = _runs(hooks.module_docstring(path))
        for page in PAGES:
            copied = runs & _runs(page.read_text())
            assert not copied, f"{page.name} repeats {path}'s docstring: {sorted(copied)[0]!r}"


def test_a_docstring_reaches_the_page_word_for_word() -> None:
    for path in _included():
        text = hooks.module_docstring(path)
        rendered = "\n".join(hooks.docstring_markdown(text))
        rendered = re.sub(r"^```\w*$", "", rendered, flags=re.MULTILINE)
        assert rendered.replace("**", "").split() == text.replace("**", "").split()


def test_the_layers_table_is_pyproject_s() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    table = hooks.layers_markdown()
    assert len(table.splitlines()) == len(layers) + 2
    for layer in layers:
        for module in re.split(r"[|:]", layer):
            assert f"`{module.strip()}`" in table

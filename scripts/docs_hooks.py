"""MkDocs hooks (mkdocs.yml `hooks:`): the parts of the documentation read from the code at
build time, so they cannot drift from it.

- `<!-- docstring PATH -->` in a page becomes PATH's module docstring, read with `ast`
  (the module is not imported), with a link to a generated page showing PATH's source.
  A proof is written once, in the docstring beside the code it is about.
- `<!-- layers -->` becomes the layers of the import-linter contract in pyproject.toml.
- `api.md` is generated whole from the ops API's own OpenAPI schema (dashboard/api.py and
  the routers it mounts): Django is set up with the settings the tests use, and no
  server runs.
"""

from __future__ import annotations

import ast
import json
import os
import posixpath
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCSTRING = re.compile(r"<!-- docstring (?P<path>[\w./-]+\.py) -->")
LAYERS = "<!-- layers -->"
SOURCE_DIR = "source"  # the generated pages of the source files a docstring comes from
LIST_ITEM = re.compile(r"(- |\d+\. )")


# --- docstrings ---------------------------------------------------------------------------
def module_docstring(path: str) -> str:
    """The module docstring of `path` (relative to the repository), read without importing."""
    text = ast.get_docstring(ast.parse((ROOT / path).read_text(), filename=path))
    if not text:
        raise ValueError(f"{path} has no module docstring")
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blocks(lines: list[str]) -> list[list[str]]:
    """Runs of non-blank lines."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def _block_markdown(block: list[str]) -> list[str]:
    """One run of lines, as the docstrings write them: paragraphs, `- ` and `1. ` items
    whose continuation lines are indented, a heading line (or lines) over an indented body,
    or, indented as a whole, a formula kept as written."""
    base = min(_indent(line) for line in block)
    block = [line[base:] for line in block]
    if base >= 4:
        return ["```text", *block, "```", ""]
    out: list[str] = []
    i = 0
    while i < len(block):
        j = i + 1
        while j < len(block) and _indent(block[j]) > 0:
            j += 1
        head, body = block[i], block[i + 1 : j]
        if LIST_ITEM.match(head):
            if not out or not LIST_ITEM.match(out[-1]):
                out.append("")
            out.append(" ".join([head, *(line.strip() for line in body)]))
        elif body:  # a heading over its indented body
            heading = [head]
            while out and out[-1] and not LIST_ITEM.match(out[-1]):
                heading.insert(0, out.pop())
            out += ["", f"**{' '.join(heading)}**", "", *docstring_markdown("\n".join(body))]
        else:
            if out and LIST_ITEM.match(out[-1]):
                out.append("")
            out.append(head)
        i = j
    return [*out, ""]


def docstring_markdown(text: str) -> list[str]:
    """A docstring written as plain text, as Markdown that keeps its structure."""
    out: list[str] = []
    for block in _blocks(text.splitlines()):
        out += _block_markdown(block)
    return out


def _source_page(path: str) -> str:
    return f"{SOURCE_DIR}/{path}.md"


def _docstring_section(path: str, page_uri: str) -> str:
    link = posixpath.relpath(_source_page(path), posixpath.dirname(page_uri) or ".")
    lines = docstring_markdown(module_docstring(path))
    note = f"*Read at build time from the module docstring of [`{path}`]({link}).*"
    return "\n".join([note, "", *lines, note, ""])


def _source_markdown(path: str) -> str:
    return f'# `{path}`\n\n````python linenums="1"\n{(ROOT / path).read_text()}````\n'


# --- the layers ----------------------------------------------------------------------------
def layers_markdown() -> str:
    """The layers contract of pyproject.toml as a table, top layer first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    rows = ["| layer | modules |", "|---|---|"]
    for number, layer in enumerate(contract["layers"], 1):
        if "|" in layer:
            siblings = " and ".join(f"`{m.strip()}`" for m in layer.split("|"))
            cell = f"{siblings}, which must not import each other"
        else:
            cell = ", ".join(f"`{m.strip()}`" for m in layer.split(":"))
        rows.append(f"| {number} | {cell} |")
    return "\n".join(rows)


# --- the ops API ---------------------------------------------------------------------------
def openapi_schema() -> dict[str, Any]:
    """The ops API's OpenAPI document, as `/api/openapi.json` serves it."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from dashboard.api import api

    return json.loads(json.dumps(api.get_openapi_schema(path_prefix="/api/")))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _type(schema: dict[str, Any]) -> str:
    """A schema's type in one line: `TeamOut` (a link), `list[KeyOut]`, `integer | null`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[`{name}`](#{name.lower()})"
    if "anyOf" in schema:
        return " \\| ".join(_type(option) for option in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type(schema.get('items', {}))}]"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'])}"
    if "format" in schema:
        return f"`{kind}` ({schema['format']})"
    return f"`{kind}`"


ERROR_SHAPE = "[`ErrorOut`](#errorout)"
CONSTRAINTS = {
    "minimum": ">=",
    "exclusiveMinimum": ">",
    "maximum": "<=",
    "minLength": "length >=",
    "maxLength": "length <=",
}


def _constraints(schema: dict[str, Any]) -> str:
    options = schema.get("anyOf", [schema])
    found = [
        f"{word} {option[key]}"
        for option in options
        for key, word in CONSTRAINTS.items()
        if key in option
    ]
    if "default" in schema:
        found.append(f"default `{json.dumps(schema['default'])}`")
    if "enum" in schema:
        found.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    return "; ".join(dict.fromkeys(found))


def _operation(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    lines += [operation.get("description") or operation.get("summary", ""), ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| parameter | in | type | required | notes |", "|---|---|---|---|---|"]
        for p in parameters:
            notes = "; ".join(filter(None, [p.get("description", ""), _constraints(p["schema"])]))
            required = "yes" if p.get("required") else ""
            cells = [f"`{p['name']}`", p["in"], _type(p["schema"]), required, _cell(notes)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        lines += [f"Body ({media}): {_type(content.get('schema', {}))}", ""]
    answers, errors = [], []
    for status, response in operation.get("responses", {}).items():
        contents = response.get("content", {})
        shapes = [_type(c["schema"]) if "schema" in c else f"`{m}`" for m, c in contents.items()]
        if shapes == [ERROR_SHAPE]:
            errors.append(str(status))
        else:
            answers.append(" ".join([str(status), response.get("description", ""), *shapes]))
    lines += ["", f"- Answers: {'; '.join(answers)}."]
    if errors:
        lines.append(f"- Errors: {', '.join(errors)}, as {ERROR_SHAPE}.")
    return [*lines, ""]


def _component(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{#{name.lower()}}}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    if "enum" in schema:
        return [*lines, "One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | notes |", "|---|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        notes = "; ".join(filter(None, [prop.get("description", ""), _constraints(prop)]))
        mark = "yes" if field in required else ""
        lines.append(f"| `{field}` | {_type(prop)} | {mark} | {_cell(notes)} |")
    return [*lines, ""]


def api_markdown(schema: dict[str, Any]) -> str:
    """The reference page: the operations by tag, in the schema's order, then the schemas."""
    info = schema["info"]
    lines = [f"# {info['title']} reference", "", info.get("description", ""), ""]
    lines += [
        "*Generated at build time from the API's own OpenAPI document (`/api/openapi.json`;"
        " interactive at `/api/docs` on a running Sluice), after the module docstring of"
        " `dashboard/api.py`. Personal tokens: [Security](security.md#personal-api-tokens).*",
        "",
        *docstring_markdown(module_docstring("dashboard/api.py")),
    ]
    by_tag: dict[str, list[str]] = {}
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            tag = (operation.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).extend(_operation(method, path, operation))
    for tag, operations in by_tag.items():
        lines += [f"## {tag.capitalize()}", "", *operations]
    lines += ["## Schemas", ""]
    for name, component in schema["components"]["schemas"].items():
        lines += _component(name, component)
    return "\n".join(lines)


# --- MkDocs events -------------------------------------------------------------------------
def _docstring_paths(docs_dir: Path) -> set[str]:
    return {
        m["path"] for page in docs_dir.rglob("*.md") for m in DOCSTRING.finditer(page.read_text())
    }


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "api.md", content=api_markdown(openapi_schema())))
    for path in sorted(_docstring_paths(Path(config["docs_dir"]))):
        files.append(File.generated(config, _source_page(path), content=_source_markdown(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    uri = page.file.src_uri
    markdown = DOCSTRING.sub(lambda m: _docstring_section(m["path"], uri), markdown)
    return markdown.replace(LAYERS, layers_markdown())

"""The human-readable reference: one self-contained HTML page rendered from the OpenAPI
document (its stylesheet ships in the package; nothing is fetched from elsewhere)."""

from __future__ import annotations

from html import escape
from importlib.resources import files
from typing import Any

Schema = dict[str, Any]
METHODS = ("get", "post", "put", "patch", "delete")
LIMITS = (
    ("minimum", "≥ {}"),
    ("maximum", "≤ {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "≥ {} items"),
    ("maxItems", "≤ {} items"),
    ("maxProperties", "≤ {} entries"),
    ("default", "default {}"),
)


def stylesheet() -> str:
    return (files("ntq.web") / "static" / "reference.css").read_text(encoding="utf-8")


def type_of(schema: Schema) -> str:
    """A short HTML description of a schema's type: ``string (uuid)``, ``one of A, B``..."""
    if "$ref" in schema:
        name = schema["$ref"].rpartition("/")[2]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in values)
    if "anyOf" in schema:
        return " | ".join(type_of(option) for option in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    text = escape(str(kind))
    if "format" in schema:
        text += f" ({escape(schema['format'])})"
    return text


def limits(schema: Schema) -> str:
    return "; ".join(escape(form.format(schema[key])) for key, form in LIMITS if key in schema)


def row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def table(head: tuple[str, ...], rows: list[str]) -> str:
    if not rows:
        return ""
    heading = "".join(f"<th>{escape(cell)}</th>" for cell in head)
    return f"<table><tr>{heading}</tr>{''.join(rows)}</table>"


def parameters(listed: list[Schema]) -> str:
    rows = [
        row(
            f"<code>{escape(p['name'])}</code>",
            escape(p["in"]),
            "yes" if p.get("required") else "",
            type_of(p["schema"]),
            escape(p.get("description", "")),
            limits(p["schema"]),
        )
        for p in listed
    ]
    return table(("parameter", "in", "required", "type", "description", "limits"), rows)


def content(body: Schema) -> str:
    types = body.get("content", {})
    return ", ".join(
        f"<code>{escape(media)}</code> {type_of(entry.get('schema', {}))}"
        for media, entry in types.items()
    )


def responses(answers: Schema, shared: Schema) -> str:
    rows = []
    for status, answer in answers.items():
        resolved = shared[answer["$ref"].rpartition("/")[2]] if "$ref" in answer else answer
        headers = ", ".join(f"<code>{escape(name)}</code>" for name in resolved.get("headers", {}))
        rows.append(
            row(
                f"<b>{escape(status)}</b>",
                escape(answer.get("description") or resolved["description"]),
                content(resolved),
                headers,
            )
        )
    return table(("status", "description", "body", "headers"), rows)


def operation(path: str, method: str, spec: Schema, inherited: list[Schema], shared: Schema) -> str:
    public = spec.get("security") == []
    parts = [
        f'<section class="operation" id="{escape(spec["operationId"])}">',
        f'<h3><span class="method {method}">{method.upper()}</span> '
        f"<code>{escape(path)}</code> {escape(spec.get('summary', ''))}"
        f"{' <span class=public>no key</span>' if public else ''}</h3>",
        f"<p>{escape(spec.get('description', ''))}</p>",
        parameters(inherited + spec.get("parameters", [])),
    ]
    if "requestBody" in spec:
        parts.append(f"<p><b>Body</b>: {content(spec['requestBody'])}</p>")
    parts += [responses(spec["responses"], shared), "</section>"]
    return "".join(parts)


def schema_section(name: str, schema: Schema) -> str:
    required = set(schema.get("required", []))
    rows = [
        row(
            f"<code>{escape(field)}</code>",
            "yes" if field in required else "",
            type_of(spec),
            escape(spec.get("description", "")),
            limits(spec),
        )
        for field, spec in schema.get("properties", {}).items()
    ]
    return (
        f'<section id="schema-{escape(name)}"><h3>{escape(name)}</h3>'
        f"<p>{escape(schema.get('description', ''))}</p>"
        f"{table(('field', 'required', 'type', 'description', 'limits'), rows)}</section>"
    )


def security(schemes: Schema) -> str:
    ways = [
        "<code>Authorization: Bearer &lt;key&gt;</code>"
        if s["type"] == "http"
        else f"<code>{escape(s['name'])}: &lt;key&gt;</code>"
        for s in schemes.values()
    ]
    return f"<p>The API key goes in any one of: {', '.join(ways)}.</p>"


def render(document: Schema) -> str:
    """The whole page."""
    info, components = document["info"], document["components"]
    shared = components["responses"]
    body = [
        f"<h1>{escape(info['title'])} {escape(info['version'])}</h1>",
        f"<p>{escape(info['description'])}</p>",
        security(components["securitySchemes"]),
        '<p>The machine-readable document: <a href="openapi.json">openapi.json</a>.</p>',
        "<h2>Operations</h2>",
    ]
    for path, item in document["paths"].items():
        body += [
            operation(path, method, item[method], item.get("parameters", []), shared)
            for method in METHODS
            if method in item
        ]
    body.append("<h2>Schemas</h2>")
    body += [schema_section(name, schema) for name, schema in components["schemas"].items()]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info['title'])} API reference</title>"
        f"<style>{stylesheet()}</style></head><body>{''.join(body)}</body></html>"
    )

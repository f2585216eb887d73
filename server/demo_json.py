"""A small valid instance of a JSON Schema: what the demo upstream answers for tool arguments and json_schema.

Covers what SDKs generate from Pydantic models and function signatures: objects with their required
properties, strings (enum, const, common formats, minLength), numbers and integers (minimum), booleans,
arrays (minItems), `$ref` into `$defs`, `anyOf`/`oneOf`/`allOf` and nullable types (the first non-null branch).
"""

from __future__ import annotations

from typing import Any

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "demo@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_MAX_DEPTH = 16  # a recursive schema (a tree of nodes) stops here


def instance(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A value valid against `schema` (best effort: patterns and numeric multiples are not honoured)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        return instance(_resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = [b for b in schema.get(combinator) or () if isinstance(b, dict) and b.get("type") != "null"]
        if branches:
            return instance(branches[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: instance(properties.get(name, {}), root, depth + 1) for name in required}
    if kind == "array":
        count = max(schema.get("minItems", 1), 0)
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        return [instance(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return int(low) if kind == "integer" else float(low)
    if kind == "boolean":
        return True
    if kind == "string":
        text = _FORMATS.get(schema.get("format", ""), "demo")
        return text.ljust(schema.get("minLength", 0), "o")
    return None


def _resolve(root: Any, ref: str) -> Any:
    """`#/$defs/Name` (or any local JSON pointer) inside the root schema."""
    node = root
    for key in ref.removeprefix("#/").split("/") if ref.startswith("#/") else ():
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node

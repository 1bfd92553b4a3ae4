"""A reader over one raw mapping that tracks the field path and rejects unknown fields.

Raw YAML enters here and leaves as plain, checked Python values; every error carries the
field path (`spec.containers[0].ports[1].containerPort`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from meshcore.resources.errors import ManifestError


def _type_name(value: object) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "integer",
        bool: "boolean",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class Fields:
    """Read fields of one mapping by name; `done()` rejects whatever was not read."""

    def __init__(self, raw: object, path: str, *, ignored: frozenset[str] = frozenset()) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ManifestError(f"expected an object, got {_type_name(raw)}", field=path)
        self._raw: dict[Any, Any] = raw
        self._path = path
        self._seen: set[str] = set()
        self._ignored = ignored
        self.ignored_present: list[str] = []

    def sub(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def has(self, name: str) -> bool:
        return name in self._raw

    def raw(self, name: str) -> Any:
        self._seen.add(name)
        return self._raw.get(name)

    def fail(self, name: str, reason: str) -> ManifestError:
        return ManifestError(reason, field=self.sub(name))

    def string(self, name: str, *, required: bool = False, default: str = "") -> str:
        value = self.raw(name)
        if value is None:
            if required:
                raise self.fail(name, "required field is missing")
            return default
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {_type_name(value)}")
        if required and not value:
            raise self.fail(name, "must not be empty")
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        default: int = 0,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self.raw(name)
        if value is None:
            if required:
                raise self.fail(name, "required field is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"expected an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise self.fail(name, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be at most {maximum}, got {value}")
        return value

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(name, f"expected an array of strings, got {_type_name(value)}")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ManifestError(
                    f"expected a string, got {_type_name(item)}", field=f"{self.sub(name)}[{i}]"
                )
            out.append(str(item))
        return tuple(out)

    def string_map(self, name: str) -> dict[str, str]:
        value = self.raw(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(name, f"expected an object of strings, got {_type_name(value)}")
        out: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise self.fail(name, f"keys must be strings, got {key!r}")
            if not isinstance(item, str):
                raise ManifestError(
                    f"expected a string, got {_type_name(item)} (quote it in YAML)",
                    field=f"{self.sub(name)}.{key}",
                )
            out[key] = item
        return out

    def objects(self, name: str) -> Iterator[tuple[str, object]]:
        """Yield (path, raw item) for each element of an array field."""
        value = self.raw(name)
        if value is None:
            return
        if not isinstance(value, list):
            raise self.fail(name, f"expected an array, got {_type_name(value)}")
        for i, item in enumerate(value):
            yield f"{self.sub(name)}[{i}]", item

    def done(self) -> list[str]:
        """Reject unknown fields; return the paths of known fields the lab ignores."""
        for key in self._raw:
            if key in self._seen:
                continue
            if key in self._ignored:
                self.ignored_present.append(self.sub(str(key)))
                continue
            raise ManifestError("unknown field", field=self.sub(str(key)))
        return self.ignored_present

"""Errors that name the file, the resource and the field, the way `kubectl apply` does."""

from __future__ import annotations


class ManifestError(Exception):
    """A manifest that cannot be accepted; says where and why."""

    def __init__(
        self,
        reason: str,
        *,
        source: str = "",
        resource: str = "",
        field: str = "",
    ) -> None:
        self.reason = reason
        self.source = source
        self.resource = resource
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(self.source)
        if self.resource:
            where.append(self.resource)
        prefix = ": ".join(where)
        field = f"{self.field}: " if self.field else ""
        return f"{prefix}: {field}{self.reason}" if prefix else f"{field}{self.reason}"

    def located(self, *, source: str | None = None, resource: str | None = None) -> ManifestError:
        """The same error with the file or resource filled in where it was not known yet."""
        return ManifestError(
            self.reason,
            source=self.source or (source or ""),
            resource=self.resource or (resource or ""),
            field=self.field,
        )


class ManifestErrors(Exception):
    """Several manifest errors found in one pass, reported together."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

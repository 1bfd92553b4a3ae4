"""Parsing manifest text in the resource tests, as if read from a file named `source`."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from meshcore.resources import (
    ManifestError,
    ManifestErrors,
    Parsed,
    Resource,
    documents_from_text,
    parse_documents,
)


@dataclass(frozen=True)
class ManifestParser:
    source: str

    def parse(self, text: str, source: str | None = None) -> list[Parsed]:
        return parse_documents(documents_from_text(textwrap.dedent(text), source or self.source))

    def parse_one(self, text: str) -> Resource:
        (parsed,) = self.parse(text)
        return parsed.resource

    def only_error(self, text: str, source: str | None = None) -> ManifestError:
        """The one error parsing `text` must give."""
        with pytest.raises(ManifestErrors) as caught:
            self.parse(text, source)
        (error,) = caught.value.errors
        return error

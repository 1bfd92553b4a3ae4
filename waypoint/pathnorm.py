"""Istio's path normalisation, done before a path is matched against an AuthorizationPolicy.

Pure. The three options of Istio's mesh config `pathNormalization.normalization`, as Envoy's
HTTP connection manager applies them (`ConnectionManagerUtility::maybeNormalizePath`):

- BASE: RFC 3986 normalisation (`normalize_path`): backslashes become slashes, escapes of
  unreserved characters are decoded (`%41` is `A`, `%2e` is `.`), other escapes get upper-case
  hex, and dot-segments are removed (`/a/../b` is `/b`, `/./b` is `/b`);
- MERGE_SLASHES: BASE, then runs of slashes merged (`//admin` is `/admin`);
- DECODE_AND_MERGE_SLASHES (the default, Istio's recommended setting): first `%2F`, `%2f`,
  `%5C` and `%5c` are decoded (`path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`), then
  MERGE_SLASHES.

In every mode the fragment (`#...`, which a client should never send: CVE-2021-39156) is
dropped and the query is not part of the path (CVE-2021-31920 covers the escaped slashes).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class PathNormalization(enum.Enum):
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


DEFAULT = PathNormalization.DECODE_AND_MERGE_SLASHES


class PathError(ValueError):
    """A request target that has no path to normalise (Envoy answers 400)."""


@dataclass(frozen=True, slots=True)
class NormalizedPath:
    path: str  # normalised, starts with "/", no query or fragment
    query: str  # what followed the first "?" (without it); "" when none


_ESCAPED_SLASH = re.compile(r"%(2[fF]|5[cC])")
_ESCAPE = re.compile(r"%([0-9a-fA-F]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(r"/{2,}")


def _unescape_slash(m: re.Match[str]) -> str:
    return "/" if m.group(1) in ("2f", "2F") else "\\"


def _canonical_escape(m: re.Match[str]) -> str:
    byte = int(m.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else "%" + m.group(1).upper()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, for an absolute path; `..` above the root stays at the root."""
    out: list[str] = []
    segments = path.split("/")[1:]  # path starts with "/"
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def split_target(target: str) -> tuple[str, str]:
    """A request target's path and query (without "?"); the fragment is dropped. An
    absolute-form target (`http://host/p`) gives its path."""
    target = target.partition("#")[0]
    path, _, query = target.partition("?")
    if "://" in path and not path.startswith("/"):
        rest = path.split("://", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    return path, query


def normalize(target: str, mode: PathNormalization = DEFAULT) -> NormalizedPath:
    """The path of a request target (`/a/../b?x=1`) as a policy sees it.

    Raises PathError for a target whose path does not start with "/" (`*` included: it has
    no path a policy could name).
    """
    path, query = split_target(target)
    if not path.startswith("/"):
        raise PathError(f"request target {target[:200]!r} has no absolute path")
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES:
        path = _ESCAPED_SLASH.sub(_unescape_slash, path)
    path = path.replace("\\", "/")
    path = _ESCAPE.sub(_canonical_escape, path)
    path = remove_dot_segments(path)
    if mode is not PathNormalization.BASE:
        path = _SLASHES.sub("/", path)
    return NormalizedPath(path, query)


_MAY_CHANGE = ("%", "\\", "//", "/.", "#")


def forwarded(target: str, mode: PathNormalization = DEFAULT) -> str:
    """The request target routes match and the backend gets: the path normalised as the
    policies saw it, the query as it came (Envoy's `normalize_path`, which Istio turns on,
    so that a backend never reads a path other than the one authorization judged). A target
    with no absolute path (`*`, absolute-form) is left as it came. Cheap when there is
    nothing to normalise (no escape, backslash, double slash, dot segment or fragment)."""
    path = target.partition("?")[0]
    if path.startswith("/") and not any(s in path for s in _MAY_CHANGE) and "#" not in target:
        return target
    try:
        normal = normalize(target, mode)
    except PathError:
        return target
    return f"{normal.path}?{normal.query}" if normal.query else normal.path


def parse_mode(text: str) -> PathNormalization:
    """The option by its Istio name (case-insensitive), for the CLI and environment."""
    try:
        return PathNormalization(text.strip().upper())
    except ValueError:
        names = ", ".join(m.value for m in PathNormalization)
        raise ValueError(f"path normalisation must be one of {names}, not {text!r}") from None


__all__ = [
    "DEFAULT",
    "NormalizedPath",
    "PathError",
    "PathNormalization",
    "normalize",
    "parse_mode",
    "remove_dot_segments",
    "split_target",
]

"""Path normalisation before authorization: Istio's options, as Envoy applies them.

Cases from Istio's security bulletins ISTIO-SECURITY-2021-005 (CVE-2021-31920: escaped slashes)
and ISTIO-SECURITY-2021-008 (CVE-2021-39156: fragments), and the examples of Istio's
"Understand path normalization" table.
"""

from __future__ import annotations

import pytest

from waypoint import pathnorm
from waypoint.pathnorm import (
    DEFAULT,
    PathError,
    PathNormalization,
    normalize,
    parse_mode,
    remove_dot_segments,
)

BASE = PathNormalization.BASE
MERGE = PathNormalization.MERGE_SLASHES
DECODE = PathNormalization.DECODE_AND_MERGE_SLASHES


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin//", "/admin/"),
        ("/./admin", "/admin"),
        ("/a/../admin", "/admin"),
        ("/a/b/../../admin", "/admin"),
        ("/../admin", "/admin"),  # above the root stays at the root
        ("/%2Fadmin", "/admin"),
        ("%2Fadmin", None),  # no leading "/": refused (Envoy: 400)
        ("/%2fadmin", "/admin"),
        ("/%5Cadmin", "/admin"),  # an escaped backslash is a slash
        ("/%5cadmin", "/admin"),
        ("/\\admin", "/admin"),
        ("/admin#fragment", "/admin"),
        ("/admin#/../public", "/admin"),
        ("/public/..%2Fadmin", "/admin"),  # CVE-2021-31920
        ("/public/..%5Cadmin", "/admin"),
        ("/public%2F..%2Fadmin", "/admin"),
        ("/%2e%2e/admin", "/admin"),  # escaped dots are unreserved: decoded, then removed
        ("/public/%2E%2E/admin", "/admin"),
        ("/%61dmin", "/admin"),  # an escaped unreserved character is decoded
        ("/a%20b", "/a%20b"),  # a reserved one stays escaped
        ("/a%3fb", "/a%3Fb"),  # with upper-case hex
        ("/admin?x=/../public", "/admin"),  # the query is not part of the path
        ("/admin/.", "/admin/"),
        ("/admin/..", "/"),
        ("http://example.com/a/../admin?q", "/admin"),  # absolute-form target
    ],
)
def test_default_normalisation_leaves_no_way_around_a_rule_for_admin(
    target: str, expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(PathError):
            normalize(target)
        return
    assert normalize(target).path == expected


def test_default_is_decode_and_merge_slashes() -> None:
    assert DEFAULT is DECODE
    assert normalize("/%2Fadmin").path == normalize("/%2Fadmin", DECODE).path


@pytest.mark.parametrize(
    ("target", "base", "merge", "decode"),
    [
        ("//admin", "//admin", "/admin", "/admin"),
        ("/a/../admin", "/admin", "/admin", "/admin"),
        ("/%2Fadmin", "/%2Fadmin", "/%2Fadmin", "/admin"),
        ("/%5Cadmin", "/%5Cadmin", "/%5Cadmin", "/admin"),
        ("/\\admin", "//admin", "/admin", "/admin"),
        ("/admin#x", "/admin", "/admin", "/admin"),
        ("/public/..%2Fadmin", "/public/..%2Fadmin", "/public/..%2Fadmin", "/admin"),
    ],
)
def test_each_option_does_what_istio_documents(
    target: str, base: str, merge: str, decode: str
) -> None:
    assert normalize(target, BASE).path == base
    assert normalize(target, MERGE).path == merge
    assert normalize(target, DECODE).path == decode


def test_query_is_kept_apart_and_fragment_dropped() -> None:
    found = normalize("/a//b?x=1&y=%2F#frag")
    assert (found.path, found.query) == ("/a/b", "x=1&y=%2F")
    assert normalize("/a").query == ""


@pytest.mark.parametrize("target", ["*", "", "admin", "?x=/admin"])
def test_a_target_without_an_absolute_path_is_refused(target: str) -> None:
    with pytest.raises(PathError):
        normalize(target)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/a/b/c/./../../g", "/a/g"), ("/mid/content=5/../6", "/mid/6"), ("/", "/")],
)
def test_rfc_3986_remove_dot_segments_examples(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


def test_mode_is_parsed_by_its_istio_name() -> None:
    assert parse_mode("merge_slashes") is MERGE
    assert parse_mode("DECODE_AND_MERGE_SLASHES") is DECODE
    with pytest.raises(ValueError, match="BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES"):
        parse_mode("NONE")


def test_invalid_utf8_and_odd_escapes_do_not_crash() -> None:
    assert normalize("/caf\xc3\xa9/%zz/%").path == "/caf\xc3\xa9/%zz/%"
    assert normalize("/%ff%FE").path == "/%FF%FE"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/b?x=1", "/a/b?x=1"),  # nothing to do: as it came (the cheap path)
        ("/public/../admin", "/admin"),
        ("//admin?q=%2F", "/admin?q=%2F"),  # the query is not the path's business
        ("/%2Fadmin", "/admin"),
        ("/%5Cadmin", "/admin"),
        ("/a/./b#frag", "/a/b"),
        ("/%7euser", "/~user"),  # unreserved escapes decoded, as Envoy
        ("*", "*"),  # no absolute path: as it came
    ],
)
def test_the_backend_gets_the_path_the_policies_judged(target: str, expected: str) -> None:
    assert pathnorm.forwarded(target) == expected

"""Problems as Kubernetes Events: which object, what they say (controller.kubewriter)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from controller.kubewriter import MAX_EVENT_MESSAGE, problem_event, problem_target
from controller.store import Problem

NOW = dt.datetime(2026, 11, 30, 21, 0, tzinfo=dt.UTC)


def problem(source: str, field: str = "spec.provider.name", keeps: bool = False) -> Problem:
    return Problem(source, "AuthorizationPolicy shop/ext", field, "not defined", keeps, 0.0)


def test_target_of_namespaced_and_cluster_scoped_objects() -> None:
    assert problem_target(problem("kubernetes:AuthorizationPolicy/shop/ext")) == (
        "AuthorizationPolicy",
        "shop",
        "ext",
    )
    assert problem_target(problem("kubernetes:Namespace/shop")) == ("Namespace", "", "shop")


def test_problems_of_no_api_object_make_no_event() -> None:
    assert problem_target(problem("/run/weft/labs/x/manifests/a.yaml")) is None
    assert problem_event(problem("lab.yaml#2"), NOW) is None


def test_event_names_the_object_field_and_reason() -> None:
    event = problem_event(problem("kubernetes:AuthorizationPolicy/shop/ext"), NOW)
    assert event is not None
    assert event["metadata"]["namespace"] == "shop"
    assert event["involvedObject"] == {
        "kind": "AuthorizationPolicy",
        "name": "ext",
        "namespace": "shop",
        "apiVersion": "security.weft.dev/v1",
    }
    assert event["type"] == "Warning" and event["reason"] == "Ignored"
    assert event["message"] == "spec.provider.name: not defined"
    assert event["firstTimestamp"] == "2026-11-30T21:00:00Z"


def test_kept_last_good_and_long_messages() -> None:
    p = Problem("kubernetes:Service/shop/web", "Service shop/web", "", "x" * 5000, True, 0.0)
    event = problem_event(p, NOW)
    assert event is not None
    assert event["reason"] == "KeptLastGood"
    assert len(event["message"]) == MAX_EVENT_MESSAGE


def test_an_empty_plugin_ca_folder_means_the_self_signed_root(tmp_path: Path) -> None:
    from controller.app import plugin_ca_given

    assert plugin_ca_given(None) is False
    empty = tmp_path / "cacerts"
    empty.mkdir()
    (empty / "..data").mkdir()  # (what a Secret volume holds besides its keys)
    assert plugin_ca_given(empty) is False
    (empty / "ca-cert.pem").write_text("x")
    assert plugin_ca_given(empty) is True

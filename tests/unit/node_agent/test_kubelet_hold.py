"""What the agent holds before the controller knows a pod (podscan.unknown_pods), and the
inotify record parser that wakes it (cgroupwatch.parse_events). Pure."""

from __future__ import annotations

import struct
from pathlib import Path

from node_agent.cgroupwatch import IN_CREATE, IN_ISDIR, IN_MODIFY, Event, parse_events
from node_agent.podscan import HELD_NAMESPACE, FoundPod, unknown_pods
from node_agent.veths import PodDevice

A, B, C, D = (f"{n}0000000-0000-0000-0000-000000000000" for n in "abcd")
DEV = PodDevice("cali1", 7)


def found(uid: str, ip: str = "10.42.0.5", host: bool = False) -> FoundPod:
    return FoundPod(uid, Path(f"/k/pod{uid}"), 1000 + ord(uid[0]), host, ip, None if host else DEV)


def test_a_pod_the_controller_does_not_know_is_held_with_its_address() -> None:
    held = unknown_pods({A: found(A)}, known_uids=set())
    assert list(held) == [A]
    assert held[A].ip == "10.42.0.5"
    assert held[A].namespace == HELD_NAMESPACE


def test_known_pods_are_never_held_enrolled_or_not() -> None:
    # enrollment of known pods is reconcile.desired_pods' job; an unenrolled known pod is let be
    assert unknown_pods({A: found(A), B: found(B)}, known_uids={A, B}) == {}


def test_host_network_pods_are_never_held() -> None:
    assert unknown_pods({C: found(C, ip="", host=True)}, known_uids=set()) == {}


def test_a_pod_without_an_address_yet_is_not_held() -> None:
    assert unknown_pods({D: found(D, ip="")}, known_uids=set()) == {}


def test_only_the_unknown_ones_of_a_mix_are_held() -> None:
    pods = {A: found(A), B: found(B, "10.42.0.6"), C: found(C, "", True), D: found(D, "")}
    assert set(unknown_pods(pods, known_uids={A})) == {B}


def test_a_found_pod_is_complete_with_address_and_device_or_host_network() -> None:
    assert found(A).complete
    assert found(C, "", True).complete
    assert not FoundPod(A, Path("/k"), 1, False, "10.0.0.1", None).complete
    assert not FoundPod(A, Path("/k"), 1, False, "", DEV).complete


def record(wd: int, mask: int, name: str = "", pad: int = 16) -> bytes:
    raw = name.encode()
    raw += b"\0" * (pad - len(raw) if name else 0)
    return struct.pack("iIII", wd, mask, 0, len(raw)) + raw


def test_inotify_records_are_read_with_their_names() -> None:
    buf = record(1, IN_CREATE | IN_ISDIR, "pod-x") + record(2, IN_MODIFY)
    assert parse_events(buf) == [Event(1, IN_CREATE | IN_ISDIR, "pod-x"), Event(2, IN_MODIFY, "")]


def test_a_truncated_inotify_record_is_dropped() -> None:
    buf = record(1, IN_CREATE, "pod-x") + record(2, IN_CREATE, "pod-y")[:-4]
    assert parse_events(buf) == [Event(1, IN_CREATE, "pod-x")]
    assert parse_events(b"\1\0\0") == []

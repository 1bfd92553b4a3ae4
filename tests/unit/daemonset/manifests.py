"""daemonset/'s objects, read as `kubectl apply -k daemonset/` reads them: the files named in
kustomization.yaml's `resources`, in that order."""

from __future__ import annotations

from typing import Any

import yaml

from tests.unit.daemonset.crdschema import DAEMONSET

Obj = dict[str, Any]


def resource_files() -> list[str]:
    return list(yaml.safe_load((DAEMONSET / "kustomization.yaml").read_text())["resources"])


def objects() -> list[Obj]:
    out: list[Obj] = []
    for name in resource_files():
        out += [d for d in yaml.safe_load_all((DAEMONSET / name).read_text()) if d]
    return out


def find(kind: str, name: str) -> Obj:
    found = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} in daemonset/"
    return found[0]


def container(pod_owner: Obj, name: str) -> Obj:
    (found,) = [c for c in pod_owner["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found

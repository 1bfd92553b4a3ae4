"""Which lab and node a `--node` option names: a node the lab does not have is said so, with
the nodes it has (as `lab exec` lists a namespace's pods), instead of "is the lab up?"."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lab.addressing import node_plans
from lab.config import STATE_ROOT
from lab.state import LabPaths, LabRecord


def lab_paths(lab_name: str) -> LabPaths:
    return LabPaths.for_lab(lab_name, Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT)))


def lab_node_names(record: LabRecord) -> list[str]:
    """The lab's nodes, from its record (known before and without its daemon)."""
    return [n.name for n in node_plans(record.config)]


def unknown_node_message(lab_name: str, node: str, nodes: list[str]) -> str | None:
    """The error for `--node NODE` on a lab with `nodes`; None when the node exists."""
    if node in nodes:
        return None
    return f'no node "{node}" in lab {lab_name}; nodes: {", ".join(nodes)}'


def check_node(paths: LabPaths, node: str) -> None:
    """ClickException naming the lab's nodes when `node` is not one of them. A lab without a
    record is left to the caller's own error (is the lab up?)."""
    record = LabRecord.load(paths)
    if record is None:
        return
    message = unknown_node_message(record.name, node, lab_node_names(record))
    if message is not None:
        raise click.ClickException(message)

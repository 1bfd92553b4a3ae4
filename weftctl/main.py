"""`weftctl`: the click group tree that fronts everything a person runs."""

from __future__ import annotations

import click

from weftctl.agent_commands import agent
from weftctl.controller_commands import controller
from weftctl.dashboard.command import dashboard
from weftctl.enroll import enroll, unenroll
from weftctl.install import install, uninstall
from weftctl.lab_commands import lab
from weftctl.precheck import precheck
from weftctl.route_commands import route
from weftctl.status_command import status
from weftctl.tap_commands import tap
from weftctl.waypoint_commands import waypoint
from weftctl.why import why
from weftctl.ztunnel_commands import ztunnel_config
from weftctl.ztunnel_restart import ztunnel


@click.group()
@click.version_option(package_name="weftmesh")
def cli() -> None:
    """weft: an ambient (sidecar-less) service mesh."""


cli.add_command(lab)
cli.add_command(controller)
cli.add_command(agent)
cli.add_command(ztunnel_config)
cli.add_command(ztunnel)
cli.add_command(waypoint)
cli.add_command(route)
cli.add_command(install)
cli.add_command(uninstall)
cli.add_command(precheck)
cli.add_command(dashboard)
cli.add_command(tap)
cli.add_command(enroll)
cli.add_command(unenroll)
cli.add_command(status)
cli.add_command(why)


if __name__ == "__main__":
    cli()

from waypoint.main import cli

cli(prog_name="python -m waypoint")

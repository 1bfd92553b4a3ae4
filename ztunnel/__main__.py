from ztunnel.main import cli

cli()

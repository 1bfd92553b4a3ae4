from controller.main import cli

cli()

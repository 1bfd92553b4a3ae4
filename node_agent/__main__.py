from node_agent.main import cli

cli()

"""`python -m deploy <command>`: the deploy commands (deploy.cli)."""

from deploy.cli import main

main()

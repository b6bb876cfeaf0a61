"""``python -m ntq`` runs the command line."""

from ntq.cli.main import main

main()

"""``python -m ntq`` runs the command line."""

from ntq.cli import main

main()

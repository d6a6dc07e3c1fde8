"""``python -m pgferry.cli`` runs the command line."""

from pgferry.cli.main import main

main(prog_name="pgferry")

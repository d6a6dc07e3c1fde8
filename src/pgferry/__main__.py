"""``python -m pgferry`` runs the command line."""

from pgferry.cli.main import main

main(prog_name="pgferry")

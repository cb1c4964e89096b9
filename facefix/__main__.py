"""``python -m facefix`` runs the command line."""

from facefix.cli import main

main()

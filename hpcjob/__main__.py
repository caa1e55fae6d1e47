"""`python -m hpcjob` runs the CLI."""

from hpcjob.cli import main

main()

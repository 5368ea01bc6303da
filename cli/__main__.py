"""`python -m podlink.cli`: the same as the `podlink` console script."""

from podlink.cli.main import main

main(prog_name="podlink")

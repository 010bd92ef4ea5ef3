"""`python -m privmodel.cli`: the same entry point as the installed `privmodel` script."""

from privmodel.cli.app import main

main()

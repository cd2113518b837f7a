"""``python -m genrec`` = the ``genrec`` command."""

from .cli import main

main()

"""`python -m chainwatch`: the same as the `chainwatch` command."""

from .cli import main

raise SystemExit(main())

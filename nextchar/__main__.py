"""`python -m nextchar` is the `nextchar` command."""

from nextchar.cli import main

raise SystemExit(main())

"""`python -m nextchar` is the `nextchar` command."""

from nextchar.cli.main import main

raise SystemExit(main())

"""python -m primary: the same as the cifleet-primary command."""

from primary.cli.main import main

raise SystemExit(main())

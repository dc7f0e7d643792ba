"""``python -m connector`` is the same as the ``meterstream`` command."""

from connector.cli import main

raise SystemExit(main())

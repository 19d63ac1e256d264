"""``python -m fastmoe`` is the ``fastmoe`` command line."""

from fastmoe.experiments.cli import main

raise SystemExit(main())

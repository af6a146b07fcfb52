"""``python -m walg.cli``: the same as the ``walg`` command."""

from walg.cli.main import entry

entry()

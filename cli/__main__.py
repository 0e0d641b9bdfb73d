"""``python -m cli``: the ``xgen`` command without the console script (e.g. from a source checkout)."""
from cli.main import cli

cli()

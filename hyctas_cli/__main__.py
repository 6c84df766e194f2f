"""``python -m hyctas_cli``: the ``hyctas`` command."""

from hyctas_cli.main import main

main()

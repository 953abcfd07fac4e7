"""``python -m gateway`` is the ``gateway`` command (used by ``loadtest --spawn``)."""

from gateway.cli import main

main()

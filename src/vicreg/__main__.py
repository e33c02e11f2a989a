"""``python -m vicreg`` (what ``torchrun -m vicreg train ...`` runs) is the ``vicreg`` command."""

from vicreg.cli import main

main()

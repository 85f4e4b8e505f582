"""``python -m qft_cli`` runs the ``qft`` command (also under ``torchrun``)."""

from qft_cli.cli.app import main

if __name__ == "__main__":
    main()

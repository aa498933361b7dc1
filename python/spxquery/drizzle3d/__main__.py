"""``python -m spxquery.drizzle3d``: the ``spxdrizzle`` command line (see :mod:`.cli`)."""

from ._install_check import main  # checks the installation, then runs cli.main

if __name__ == "__main__":
    raise SystemExit(main())

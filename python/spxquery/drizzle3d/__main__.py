"""``python -m spxquery.drizzle3d``: the ``spxdrizzle`` command line (see :mod:`.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

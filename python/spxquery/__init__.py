"""spxquery namespace: this distribution provides :mod:`spxquery.drizzle3d`."""

"""Paths of the data files bundled with the package."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

#: SPHEREx spectral-channel calibration (HDU 1 CHANNEL_MAP, HDU 2 SPECTRAL_CHANNELS).
SPECTRAL_CHANNELS_FILE = DATA_DIR / "spectral_channels_spx_cal-sch-v1-2026-106.fits"

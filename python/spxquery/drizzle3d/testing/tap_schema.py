"""The simulated TAP service's schema and VOSI documents.

The columns of ``spherex.plane`` and ``spherex.artifact`` that the simulated service knows,
with their VOTable datatypes (the index rows carry exactly these names, see docs/design.md),
and the minimal VOSI ``availability``, ``capabilities`` and ``tables`` documents pyvo reads.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Numeric columns and their VOTable datatypes.
NUMERIC_COLUMNS = {
    "energy_bounds_lower": "double",
    "energy_bounds_upper": "double",
    "time_bounds_lower": "double",
    "time_bounds_upper": "double",
    "contentlength": "long",
}
#: Character columns.
STRING_COLUMNS = (
    "obs_publisher_did",
    "energy_bandpassname",
    "uri",
    "contentchecksum",
    "producttype",
    "collection",
    "cloud_access",
)
#: The footprint column: a polygon, flat (ra, dec) pairs in degrees.
POLY_COLUMN = "poly"

_PLANE_COLUMNS = ("obs_publisher_did", "energy_bandpassname", "energy_bounds_lower", "energy_bounds_upper",
                  "time_bounds_lower", "time_bounds_upper", "poly")
_ARTIFACT_COLUMNS = ("uri", "contentlength", "contentchecksum", "producttype", "cloud_access")


def is_column(name: str) -> bool:
    """True when ``name`` (lower case, no table prefix) is a column of the simulated schema."""
    return name in NUMERIC_COLUMNS or name in STRING_COLUMNS or name == POLY_COLUMN


def column_datatype(name: str) -> str:
    """VOTable datatype of a column: ``double``, ``long`` or ``char``."""
    return NUMERIC_COLUMNS.get(name, "double" if name == POLY_COLUMN else "char")


AVAILABILITY = b"""<?xml version="1.0" encoding="UTF-8"?>
<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">
  <vosi:available>true</vosi:available>
</vosi:availability>
"""


def capabilities_xml(tap_url: str) -> bytes:
    """VOSI capabilities of a TAP service at ``tap_url`` (ADQL 2.0, VOTable output)."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
  xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">
  <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="base">{tap_url}</accessURL></interface>
    <language><name>ADQL</name><version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version></language>
    <outputFormat><mime>application/x-votable+xml</mime></outputFormat>
  </capability>
</vosi:capabilities>
""".encode()


def tables_xml() -> bytes:
    """VOSI tableset describing spherex.plane and spherex.artifact (simulated columns)."""

    def table(name: str, cols: Sequence[str]) -> str:
        body = "".join(
            f'<column><name>{c}</name><dataType xsi:type="vs:VOTableType">{column_datatype(c)}</dataType></column>'
            for c in cols
        )
        return f"<table><name>{name}</name>{body}</table>"

    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<schema><name>spherex</name>"
        + table("spherex.plane", _PLANE_COLUMNS) + table("spherex.artifact", _ARTIFACT_COLUMNS)
        + "</schema></vosi:tableset>"
    ).encode()

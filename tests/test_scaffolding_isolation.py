"""Product code is separate from test scaffolding: no module of the package outside
``simulate/`` and ``testing/`` imports the simulator or the loopback archive server
(the CLI's demo, serve and simulate commands import them when they run)."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = r"""
import importlib, json, pkgutil, sys
import spxquery.drizzle3d as pkg

SCAFFOLDING = ("spxquery.drizzle3d.simulate", "spxquery.drizzle3d.testing")

def scaffolding(name):
    return any(name == s or name.startswith(s + ".") for s in SCAFFOLDING)

def walk(path, prefix):
    # like pkgutil.walk_packages, but never imports a scaffolding package to look inside it
    for m in pkgutil.iter_modules(path, prefix):
        if scaffolding(m.name) or m.name.endswith("__main__"):
            continue
        module = importlib.import_module(m.name)
        yield m.name
        if m.ispkg:
            yield from walk(module.__path__, m.name + ".")

names = list(walk(pkg.__path__, pkg.__name__ + "."))
print(json.dumps({"imported": names, "scaffolding": sorted(m for m in sys.modules if scaffolding(m))}))
"""


def test_product_modules_do_not_import_scaffolding():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    imported = set(result["imported"])
    # the walk reached the product modules (a broken walk must not pass vacuously)
    assert {"spxquery.drizzle3d.pipeline", "spxquery.drizzle3d.query", "spxquery.drizzle3d.archive.fetch",
            "spxquery.drizzle3d.config"} <= imported
    assert result["scaffolding"] == []

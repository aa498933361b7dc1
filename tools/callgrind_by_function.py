"""Instructions of a callgrind profile, attributed to this crate's source functions.

The release build inlines almost everything into one function (the band scan), so
callgrind's own per-function totals say little. This script maps every executed
instruction address to its inline stack (``addr2line -i``) and charges it to the
innermost frame that lies in ``rust/src/*.rs`` or ``rust/benches/*.rs``, named by the
enclosing ``fn`` of that source line (standard-library code inlined into our functions is
charged to them).

Usage (the probe binary of ``rust/benches/probe.rs``, built with line tables, run under
callgrind with per-instruction counts)::

    CARGO_PROFILE_BENCH_DEBUG=line-tables-only cargo bench --bench probe --no-run   # prints the binary
    PROBE_REPS=3 valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=cg.out \\
        target/release/deps/probe-HASH square_17
    python tools/callgrind_by_function.py cg.out target/release/deps/probe-HASH --calls 3

Prints millions of instructions per call (``--calls``: how many calls the run made, so
the probe's set-up, counted once, is diluted; subtract it by hand or use a difference of
two runs, ``PROBE_REPS=1`` and ``3``, for exact figures). ``--lines`` splits each function
by source line.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import re
import subprocess
from pathlib import Path

RUST = Path(__file__).resolve().parent.parent / "rust"
#: A Rust function definition (any visibility, unsafe or const).
FN = re.compile(r"\s*(?:pub(?:\([a-z]+\))? )?(?:unsafe )?(?:const )?fn (\w+)")


def instruction_costs(profile: Path, binary: Path) -> collections.Counter:
    """Self cost (Ir) per instruction address of `binary` in a callgrind profile."""
    costs: collections.Counter = collections.Counter()
    names: dict[tuple[str, str], str] = {}

    def name(kind: str, value: str) -> str | None:
        m = re.match(r"\((\d+)\)(?: (.*))?", value)
        if not m:
            return value
        if m.group(2):
            names[(kind, m.group(1))] = m.group(2)
        return names.get((kind, m.group(1)))

    obj = None
    addr = 0
    after_calls = False
    for raw in profile.read_text().splitlines():
        if raw.startswith(("ob=", "cob=")):
            value = name("ob", raw.split("=", 1)[1])
            if raw.startswith("ob="):
                obj = value
            continue
        if raw.startswith(("fn=", "cfn=")):
            name("fn", raw.split("=", 1)[1])
            continue
        if raw.startswith(("fl=", "fi=", "fe=", "cfi=", "cfl=")):
            name("fl", raw.split("=", 1)[1])
            continue
        if raw.startswith("calls="):
            after_calls = True  # the next cost line is the call's inclusive cost
            continue
        if not raw or raw[0] not in "+-*0123456789":
            continue
        parts = raw.split()
        a = parts[0]
        if a.startswith("0x"):
            addr = int(a, 16)
        elif a[0] in "+-":
            step = int(a[1:], 16) if a[1:].startswith("0x") else int(a[1:])
            addr += step if a[0] == "+" else -step
        if after_calls:
            after_calls = False
            continue
        if obj and obj.endswith(binary.name) and len(parts) >= 3:
            costs[addr] += int(parts[2])
    return costs


def source_functions() -> dict[str, list[tuple[int, str]]]:
    """For each source file (by name), the (line, name) of every `fn` definition."""
    found = {}
    for path in [*RUST.glob("src/*.rs"), *RUST.glob("benches/*.rs")]:
        lines = path.read_text().splitlines()
        found[path.name] = [(n + 1, m.group(1)) for n, text in enumerate(lines) if (m := FN.match(text))]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path, help="callgrind output file (run with --dump-instr=yes)")
    ap.add_argument("binary", type=Path, help="the profiled binary (built with line tables)")
    ap.add_argument("--calls", type=float, default=1.0, help="divide by this many calls (default 1)")
    ap.add_argument("--lines", action="store_true", help="split by source line")
    ap.add_argument("--top", type=int, default=30, help="rows to print (default 30)")
    args = ap.parse_args()

    costs = instruction_costs(args.profile, args.binary)
    addrs = sorted(costs)
    out = subprocess.run(
        ["addr2line", "-i", "-f", "-C", "-a", "-e", str(args.binary)],
        input="\n".join(hex(a) for a in addrs), capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    frames: dict[int, list[tuple[str, str]]] = {}
    current, pending = 0, None
    for text in out:
        if text.startswith("0x"):
            current, pending = int(text, 16), None
            frames[current] = []
        elif pending is None:
            pending = text
        else:
            frames[current].append((pending, text))  # (function, file:line), innermost first
            pending = None

    functions = source_functions()
    starts = {f: [line for line, _ in v] for f, v in functions.items()}
    totals: collections.Counter = collections.Counter()
    for a in addrs:
        label = None
        for _, location in frames.get(a, []):
            m = re.match(r".*/(\w+\.rs):(\d+)", location)
            if m and m.group(1) in functions:
                file, line = m.group(1), int(m.group(2))
                k = bisect.bisect_right(starts[file], line) - 1
                label = f"{file}:{functions[file][k][1] if k >= 0 else '?'}" + (f":{line}" if args.lines else "")
                break
        if label is None:
            fr = frames.get(a)
            label = "other: " + (fr[-1][0][:60] if fr else "?")
        totals[label] += costs[a]
    total = sum(totals.values())
    print(f"{'M instr/call':>12}  {'share':>6}  function")
    for label, n in totals.most_common(args.top):
        print(f"{n / args.calls / 1e6:12.2f}  {100 * n / total:5.1f}%  {label}")
    print(f"{total / args.calls / 1e6:12.2f}  100.0%  total")


if __name__ == "__main__":
    main()

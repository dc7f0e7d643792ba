"""``python -m meterstream_local.registry fetch``: fetch Apicurio's bundle once (bootstrap.sh).

Prints one line saying where it is and whether it was fetched or cached; exits 1 with the
reason when it cannot be fetched.
"""

from __future__ import annotations

import sys
import time

from meterstream_local.registry.bundle import APICURIO_VERSION, cached_bundle, fetch_bundle
from meterstream_local.registry.errors import LocalRegistryError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m meterstream_local.registry``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print("usage: python -m meterstream_local.registry fetch", file=sys.stderr)
        return 2
    was_cached = cached_bundle() is not None
    started = time.monotonic()
    try:
        jar = fetch_bundle()
    except LocalRegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    how = "cached" if was_cached else f"fetched in {time.monotonic() - started:.1f} s"
    print(f"registry: Apicurio Registry {APICURIO_VERSION} ready in {jar.parent} ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

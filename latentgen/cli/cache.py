"""``latentgen cache``: the converted U-Nets kept on disk (``latentgen.backends.cache``), and how to empty it.

    latentgen cache            # each entry's size and last use, the total and the limit
    latentgen cache --clear    # remove them all (each is converted again on its next use)
"""

from __future__ import annotations

import argparse
import time


def cmd_cache(args: argparse.Namespace) -> int:
    from ..backends import cache

    if args.clear:
        print(f"removed {cache.clear() / 2**20:.1f} MiB from {cache.cache_dir()}")
        return 0
    found = cache.entries()
    for e in reversed(found):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        print(f"{e.folder.name[:16]}  {e.bytes / 2**20:9.1f} MiB  last used {used}")
    total = sum(e.bytes for e in found)
    print(f"{len(found)} converted U-Net(s), {total / 2**30:.2f} GB in {cache.cache_dir()} "
          f"(limit {cache.limit_bytes() / 2**30:g} GB: ${cache.LIMIT_ENV})")
    return 0


def add_parser(sub) -> None:
    c = sub.add_parser("cache", help="list or clear the converted U-Nets kept on disk",
                       description="The OpenVINO U-Nets latentgen converted, one per set of weights, in "
                                   "$LATENTGEN_CACHE/openvino (default ~/.cache/latentgen/openvino). The least "
                                   "recently used are removed after a conversion once they pass $LATENTGEN_CACHE_GB.")
    c.add_argument("--clear", action="store_true", help="remove every entry")
    c.set_defaults(func=cmd_cache)

"""``python -m vtab_lily.data {prepare,verify,demo} ...``"""

from __future__ import annotations

import sys

from ..errors import run_cli

COMMANDS = ("prepare", "verify", "demo")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m vtab_lily.data {prepare,verify,demo} [options]\n\n"
              "  prepare --from PATH [--from PATH ...] --root data/vtab-1k [--tasks a,b] [--encoding png|jpeg]\n"
              "                                                       lay out VTAB-1K from archives or TFDS\n"
              "  verify --root data/vtab-1k [--tasks a,b] [--quick] [--write-manifest]   check a data root\n"
              "  demo --root data/vtab-demo [--force]                 write the demo suite")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "prepare":
        from .prepare import main as prepare_main

        return prepare_main(rest)
    if command == "verify":
        from .verify import main as verify_main

        return verify_main(rest)
    if command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    from ..errors import unknown_name

    raise unknown_name("command", command, COMMANDS)


if __name__ == "__main__":
    run_cli(main)

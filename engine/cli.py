"""`engine`: encode datasets into latent stores, inspect them, train and evaluate classifiers."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from engine import encode_cli, inspect_cli

    encode_cli.add_parser(sub)
    inspect_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

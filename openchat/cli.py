"""`openchat` command line: `openchat dev-model [DIR]` (more subcommands join as features land)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_DEV_MODEL_DIR = Path(".models/openchat-dev")


def _dev_model(args: argparse.Namespace) -> int:
    from openchat.devmodel import build_dev_model

    path = build_dev_model(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"dev model ready at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openchat", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser(
        "dev-model", help="build the small random-weight OpenChat checkpoint for tests"
    )
    dev.add_argument("out", nargs="?", type=Path, default=DEFAULT_DEV_MODEL_DIR)
    dev.add_argument("--seed", type=int, default=0)
    dev.add_argument("--overwrite", action="store_true", help="rebuild even if present")
    dev.set_defaults(handler=_dev_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

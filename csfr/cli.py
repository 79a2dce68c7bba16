"""What the train and evaluate commands share: config flags, and turning bad input into one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from csfr import configs


def add_config_flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    presets = ", ".join(configs.names())
    parser.add_argument("--config", default=default, metavar="NAME|FILE",
                        help=f"a preset ({presets}) or a JSON config file, e.g. a run's config.json"
                             + (f" (default: {default})" if default else ""))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set train.iters=40000 or "
                             "--set eval.scales=[0.5,1.0,1.5]; values are parsed as JSON when they can be; "
                             "repeat the flag for several fields")
    parser.add_argument("--data-root", default=None, metavar="PATH",
                        help="dataset root (sets data.root), laid out as docs/data.md describes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to compute (sets train.device; auto = this process's GPU if any)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")


def resolve(args: argparse.Namespace, base: dict | None = None) -> dict:
    """The config the flags describe: --config (or `base`), then --set, then the direct flags;
    validated against the schema (a wrong type or range is a ValueError naming the key)."""
    config = configs.read(args.config) if args.config else base
    for assignment in args.overrides:
        configs.override(config, assignment)
    if args.data_root is not None:
        config["data"]["root"] = args.data_root
    if args.device is not None:
        config["train"]["device"] = args.device
    configs.validate(config)
    return config


TRACEBACK_VARIABLE = "CSFR_TRACEBACK"


def run_main(prog: str, body: Callable[[], int | None]) -> None:
    """Run `body`; errors about the user's input (bad config, option, path, checkpoint, device, a
    folder that cannot be written, a full disk) end with one line `prog: error: ...` and exit
    status 2 instead of a traceback. CSFR_TRACEBACK=1 in the environment keeps the traceback."""
    try:
        sys.exit(body() or 0)
    except (ValueError, TypeError, OSError) as e:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)

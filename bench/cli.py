"""`bench`: measure kernels, loaders and whole training steps; render reports."""

from __future__ import annotations

import importlib
import sys

from engine.failures import INTERRUPTED, expected_failure

# subcommand -> module with `main(argv: list[str]) -> int`
COMMANDS = {
    "kernels": "bench.kernels",
    "loaders": "bench.loaders",
    "throughput": "bench.throughput",
    "fidelity": "bench.fidelity",
    "report": "bench.report",
    "evaluation": "bench.evaluation",
    "latent-models": "bench.latent_models",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        print(f"usage: bench {{{known}}} [options]   (bench <command> --help for each)")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        return int(importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0)
    except (Exception, KeyboardInterrupt) as err:  # the user's to fix: one line; a bug keeps its traceback
        failure = expected_failure(err, "run the same command again")
        if failure is None:
            raise
        print(f"bench {argv[0]}: {failure.line}", file=sys.stderr)
        return INTERRUPTED if failure.status == INTERRUPTED else 2


if __name__ == "__main__":
    sys.exit(main())

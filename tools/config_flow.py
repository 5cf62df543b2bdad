#!/usr/bin/env python
"""Follow the training config through one real `engine train` run: the modules it enters, in order, how
often it returns to a module it had left, and whether it ever climbs back up a layer.

    python tools/config_flow.py --store STORE [--model NAME] [--json PATH] [--show]

It runs ``engine.cli.main(["train", "--store", STORE, "--max-steps", "2", ...])`` under ``sys.setprofile``.
The config is the first argument of ``engine.train.train``, as the command line builds it; from then on every Python
frame of ``engine/`` or ``kernels/`` that holds that very object among its locals (an argument, ``self``
for its own methods, or a variable) is a *stay* in its module while it runs. The flow is the sequence of
modules of the innermost such frame, one entry per change:

- stays: entries of the flow; modules: distinct ones;
- returns: entries whose module the flow had already left (``a -> b -> a`` is one return, to ``a``);
- climbs: calls from a library module (``engine/<package>/``, ``kernels/``) into a job module at the
  ``engine/`` root, or from a job into ``engine/cli.py``: a lower layer calling back up.

Only the frames that hold the config object count: a function handed ``cfg.lr`` is not followed (its
module did not receive the config). The numbers depend on that definition, so compare them only with
this tool's own numbers, for example on an older commit (run the tool from this checkout with
``PYTHONPATH`` pointing at the other one).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def layer(module: str) -> int:
    """0 the command line, 1 a job (engine/ root), 2 the library (engine subpackages, kernels)."""
    if module == "engine/cli.py":
        return 0
    return 1 if module.count("/") == 1 and module.startswith("engine/") else 2


def follow(argv: list[str]) -> dict:
    """Run ``engine <argv>`` and return the config's flow through the engine's modules."""
    import engine
    import kernels

    roots = [Path(engine.__file__).resolve().parent, Path(kernels.__file__).resolve().parent]
    base = roots[0].parent
    names: dict[str, str | None] = {}

    def module_of(code) -> str | None:
        if code.co_filename not in names:
            path = Path(code.co_filename).resolve()
            inside = any(root in path.parents for root in roots)
            names[code.co_filename] = str(path.relative_to(base)) if inside else None
        return names[code.co_filename]

    config: dict = {"object": None}
    stack: list[tuple[object, str]] = []  # (frame, module) of the frames holding the config
    flow: list[str] = []
    climbs: list[str] = []

    def holds(frame, module: str) -> bool:
        if config["object"] is None and (module, frame.f_code.co_name) == ("engine/train.py", "train"):
            config["object"] = next(iter(frame.f_locals.values()))  # its first argument: the run's config
        return config["object"] is not None and any(v is config["object"] for v in frame.f_locals.values())

    def note(module: str) -> None:
        if not flow or flow[-1] != module:
            flow.append(module)

    def profile(frame, event, arg):
        if event == "call":
            module = module_of(frame.f_code)
            if module is None or not holds(frame, module):
                return
            if stack and layer(module) < layer(stack[-1][1]):
                climbs.append(f"{stack[-1][1]} -> {module} ({frame.f_code.co_name})")
            stack.append((frame, module))
            note(module)
        elif event == "return" and stack and stack[-1][0] is frame:
            stack.pop()
            if stack:
                note(stack[-1][1])

    from engine.cli import main

    sys.setprofile(profile)
    try:
        status = main(argv)
    finally:
        sys.setprofile(None)
    seen: set[str] = set()
    returns = []
    for i, module in enumerate(flow):
        if module in seen:
            returns.append(f"{flow[i - 1]} -> {module}")
        seen.add(module)
    return {
        "status": status,
        "flow": flow,
        "stays": len(flow),
        "modules": len(seen),
        "returns": len(returns),
        "return_steps": returns,
        "climbs": climbs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a latent store (`engine encode`)")
    parser.add_argument("--model", default="adm-s-film", help="latent model of the run (default adm-s-film)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--show", action="store_true", help="print the whole flow, one stay per line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        train = ["train", "--store", args.store, "--model", args.model, "--out", f"{out}/run"]
        result = follow([*train, "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--device", "cpu"])
    if result["status"] != 0:
        print(f"config_flow: engine train exited {result['status']}", file=sys.stderr)
        return 1
    if args.show:
        print("\n".join(result["flow"]))
    print(
        f"{result['stays']} stays in {result['modules']} modules, {result['returns']} returns to a module already "
        f"left, {len(result['climbs'])} climbs back up"
    )
    for step in result["return_steps"]:
        print(f"  return: {step}")
    for step in result["climbs"]:
        print(f"  climb: {step}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Follow the training config, and the values taken from it, through one real `engine train` run: the
modules it is handed into, in order, how often it comes back to a module it had already been handed into,
and whether a lower layer ever hands it back up.

    python tools/config_flow.py --store STORE [--model NAME] [--json PATH] [--show]

It runs ``engine.cli.main(["train", "--store", STORE, "--epochs", "1", "--batch-size", "256", ...])``, a
whole epoch with its validation and the final evaluation, under ``sys.setprofile``. The config is the first
argument of ``engine.train.train``. Its number and string fields are swapped for tagged equals (bools and
None cannot be tagged), so a function handed ``cfg.lr`` or ``cfg.store`` can be told from one handed an
unrelated number; a value computed from them (``cfg.seed * 7``) is no longer tagged.

- A frame of ``engine/`` or ``kernels/`` *holds* the config when an argument (or a closure variable) is the
  config, a tagged value, or a dict/list/tuple holding one, two levels deep. An object built from the config
  and later called (``self``) does not count: it carries its values, nobody hands them on.
- An *entry* is a call, from another module, into a frame that holds it, in another module than the
  innermost frame holding it: a hand-off. Each call site counts at its first run, so a loop over roles,
  epochs or steps is one hand-off.
- What is followed is the config handed down from ``engine.train.train``, in the thread that runs it:
  ``evaluate_checkpoint`` reads the run's config back from the checkpoint, so past the arguments it is
  handed (``cfg.loader``, ``cfg.fold``) the final evaluation's own hand-offs are not seen, nor are those of a
  loader's producer thread.
- The flow is engine/train.py followed by the entries' modules (one per change of module); stays are its
  entries, modules the distinct ones; a *return* is an entry into a module already in the flow; a *climb* is
  an entry from a library module (``engine/<package>/``, ``kernels/``) into a job (``engine/`` root) or from
  a job into ``engine/cli.py``: a lower layer handing it back up.

The numbers depend on this definition; compare them only with this tool's own, for example on an older
commit (run the tool from this checkout with ``PYTHONPATH`` pointing at the other one).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


class _Int(int):
    """A config value, tagged: the same number, but a function handed it can be told to have got it."""

    def __copy__(self):  # copies keep the tag (``dataclasses.asdict`` deep-copies every field)
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):  # a checkpoint pickles the plain value: it must load without this tool
        return (int, (int(self),))


class _Float(float):
    __copy__, __deepcopy__ = _Int.__copy__, _Int.__deepcopy__

    def __reduce__(self):
        return (float, (float(self),))


class _Str(str):
    __copy__, __deepcopy__ = _Int.__copy__, _Int.__deepcopy__

    def __reduce__(self):
        return (str, (str(self),))


TAGS = {int: _Int, float: _Float, str: _Str}


def tag_values(config) -> None:
    """Replace the config's number and string fields by tagged equals."""
    for name, value in vars(config).items():
        if type(value) in TAGS:
            object.__setattr__(config, name, TAGS[type(value)](value))


def carries(value, config, depth: int = 2) -> bool:
    """Whether ``value`` is the config, a tagged value taken from it, or a dict/list/tuple holding one."""
    if value is config or type(value) in (_Int, _Float, _Str):
        return True
    if depth and isinstance(value, dict):
        return any(carries(v, config, depth - 1) for v in value.values())
    if depth and isinstance(value, list | tuple):
        return any(carries(v, config, depth - 1) for v in value)
    return False


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
    where: list[str] = []  # the function of each entry, for --show
    climbs: list[str] = []
    sites: set = set()

    def holds(frame, module: str) -> bool:
        if config["object"] is None and (module, frame.f_code.co_name) == ("engine/train.py", "train"):
            config["object"] = next(iter(frame.f_locals.values()))  # its first argument: the run's config
            tag_values(config["object"])
        return config["object"] is not None and any(carries(v, config["object"]) for v in frame.f_locals.values())

    def profile(frame, event, arg):
        if event == "call":
            module = module_of(frame.f_code)
            if module is None or not holds(frame, module):
                return
            caller = frame.f_back
            site = (caller.f_code, caller.f_lineno, frame.f_code) if caller is not None else frame.f_code
            first = site not in sites  # a call site counts at its first run: a loop over roles or steps is one trip
            sites.add(site)
            handed = caller is None or module_of(caller.f_code) != module  # called from another module
            if first and handed and (not stack or stack[-1][1] != module):  # a hand-off: an entry of the flow
                if stack and layer(module) < layer(stack[-1][1]):
                    climbs.append(f"{stack[-1][1]} -> {module} ({frame.f_code.co_name})")
                if not flow or flow[-1] != module:
                    flow.append(module)
                    where.append(f"{module} ({frame.f_code.co_qualname})")
            stack.append((frame, module))  # every holding frame, so calls below a repeated one see their caller
        elif event == "return" and stack and stack[-1][0] is frame:
            stack.pop()

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
            returns.append(f"{where[i - 1]} -> {where[i]}")
        seen.add(module)
    return {
        "status": status,
        "flow": flow,
        "where": where,
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
    parser.add_argument("--show", action="store_true", help="print the whole flow, one entry per line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        train = ["train", "--store", args.store, "--model", args.model, "--out", f"{out}/run"]
        result = follow([*train, "--epochs", "1", "--batch-size", "256", "--device", "cpu"])
    if result["status"] != 0:
        print(f"config_flow: engine train exited {result['status']}", file=sys.stderr)
        return 1
    if args.show:
        print("\n".join(result["where"]))
    print(
        f"{result['stays']} stays in {result['modules']} modules, {result['returns']} returns to a module already "
        f"in the flow, {len(result['climbs'])} climbs back up"
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

"""One benchmark case measured into a row: a probe (does a batch fit?), a timed row with FLOPs and
utilisation, peak memory at a chosen batch, and stepping down on out-of-memory."""

from __future__ import annotations

import dataclasses
import functools
import gc

import torch

from bench.flop_count import count_training_flops
from bench.memory import peak_memory
from bench.timing import sync, time_windows
from bench.train_steps import Case, StepOptions, make_step


def identity(case: Case, batch: int) -> dict:
    """What every row of ``case`` at ``batch`` starts with: which model, input and batch it measured."""
    return {
        "space": case.space,
        "model": case.model,
        "shape_name": case.shape_name,
        "shape": list(case.shape),
        "case": case.name,
        "source_px": case.source_px,
        "batch": batch,
    }


class DoesNotFit(Exception):
    """Even batch 1 of a case does not fit the device."""


def oom_types() -> tuple[type[BaseException], ...]:
    return (torch.cuda.OutOfMemoryError,) if torch.cuda.is_available() else ()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def two_steps_peak(case: Case, batch: int, opts: StepOptions) -> int:
    """Peak memory in bytes of two training steps of ``case`` at ``batch`` (the second with Adam's state in
    place), freed afterwards, also when a step runs out of memory."""
    try:
        with peak_memory(opts.device) as mem:
            step, _ = make_step(case, batch, opts)
            step(0), step(1)
            sync(opts.device)
            del step
    finally:
        free(opts.device)
    return mem["bytes"]


def probe(case: Case, batch: int, opts: StepOptions, cpu_budget: int) -> bool:
    """Do two steps at ``batch`` run? On GPU: no out-of-memory. On CPU: peak RSS under ``cpu_budget`` bytes."""
    try:
        peak = two_steps_peak(case, batch, opts)  # on GPU, running at all is the answer
    except oom_types():
        return False
    return opts.device.type == "cuda" or peak <= cpu_budget


def measure(case: Case, batch: int, opts: StepOptions, timing: dict, peak_flops: float, note: str = "") -> dict:
    """One row: samples/s (median, IQR), peak memory, FLOPs per sample and utilisation of ``case`` at ``batch``."""
    with peak_memory(opts.device) as mem:
        step, net = make_step(case, batch, opts)
        t = time_windows(step, batch, opts.device, **timing)
    params = sum(p.numel() for p in net.parameters())
    del step, net
    free(opts.device)
    # FLOPs of the same step run eagerly (a compiled graph hides its ops from the counter; the math is the same)
    eager, _ = make_step(case, batch, dataclasses.replace(opts, compile=False))
    flops = count_training_flops(functools.partial(eager, 10**6))
    del eager
    free(opts.device)
    per_sample = flops / batch if flops else None
    return {
        **identity(case, batch),
        "parameters": params,
        **t,
        "peak_memory_bytes": mem["bytes"],
        "flops_per_sample": per_sample,
        "utilisation": per_sample * t["samples_per_s"] / peak_flops if per_sample else None,
        "compile": opts.compile,
        "channels_last": opts.channels_last,
        "note": note,
    }


def memory_at(case: Case, batch: int, opts: StepOptions) -> dict:
    """Peak memory of two training steps of ``case`` at ``batch``: where activations, not weights and optimizer
    state, dominate (what training at the paper's batch 256 is like), measured without the timing windows."""
    return {**identity(case, batch), "peak_memory_bytes": two_steps_peak(case, batch, opts)}


def measure_stepping_down(case: Case, batch: int, opts: StepOptions, timing: dict, peak_flops: float, log) -> dict:
    """``measure`` at ``batch``, halving on out-of-memory and saying so in the row and the log."""
    asked = batch
    while batch >= 1:
        try:
            note = "" if batch == asked else f"batch {asked} did not fit; stepped down to {batch}"
            return measure(case, batch, opts, timing, peak_flops, note)
        except oom_types():
            free(opts.device)
            log(f"{case.name}: batch {batch} does not fit the device; stepping down to {batch // 2}")
            batch //= 2
    raise DoesNotFit(f"{case.name}: even batch 1 does not fit the device")

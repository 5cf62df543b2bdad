"""The Markdown tables of a `bench throughput` result, shared by its full report (`bench report`) and the
results page (bench/readme_section.py): the headline pairs, the ratios, memory where activations dominate and the
predicted section. Every figure comes from the result's JSON.
"""

from __future__ import annotations

SCHEMA = "latent-engine/bench-throughput/1"
MiB = 2**20


def rate(r: dict) -> str:
    return f"{r['samples_per_s']:,.1f} ({r['iqr'][0]:,.1f}-{r['iqr'][1]:,.1f})"


def or_dash(value, fmt: str) -> str:
    """``value`` formatted, or "-" where the run has none."""
    return "-" if value is None else format(value, fmt)


def _source_px(case: str) -> int:
    """The image px a latent case stands for ("convnext-t-film @ flux2-512 (32x64x64)" -> 512)."""
    return int(case.split(" @ ")[1].split(" ")[0].rsplit("-", 1)[1])


def headlines(report: dict) -> list[dict]:
    """The paper's comparison as closely as this run has it, in both pairings: the first latent model on the
    FLUX.2 shape of the largest resolution against the first image model, equal batch."""
    eq = [r for r in report["ratios"] if r["regime"] == "equal batch"]
    if not eq:
        return []
    first_latent = report["rows"][0]["model"] if report["rows"] else None
    pool = [r for r in eq if "flux2-" in r["latent"] and r["latent"].startswith(f"{first_latent} @ ")] or eq
    latent = max(pool, key=lambda r: _source_px(r["latent"]))["latent"]
    image_model = next((r["model"] for r in report["rows"] if r["space"] == "image"), None)
    return [r for r in eq if r["latent"] == latent and r["image"].startswith(f"{image_model} @ ")]


def headline(report: dict) -> dict | None:
    """The headline pair of the paper protocol (or the only pairing the run has)."""
    found = headlines(report)
    return next((h for h in found if h.get("pairing") == "paper protocol"), found[0] if found else None)


def headline_lines(report: dict) -> list[str]:
    """The headline pairs, both pairings, beside the paper's ratios (none when the run has no equal-batch pair)."""
    found = headlines(report)
    if not found:
        return []
    lines = [
        "| pairing | pair (equal batch) | throughput latent/image | memory image/latent | paper |",
        "|---|---|---:|---:|---:|",
    ]
    paper = report["paper"]
    for h in found:
        lines.append(
            f"| {h.get('pairing', 'same source')} | {h['latent']} vs {h['image']}, batch {h['latent_batch']} | "
            f"{h['throughput_ratio']:.2f}x | {or_dash(h['memory_ratio'], '.2f')}x | "
            f"{paper['throughput_ratio']:.0f}x / {paper['memory_ratio']:.0f}x |"
        )
    return lines


def memory_lines(report: dict) -> list[str]:
    """Peak memory at the batch where activations dominate, and its ratios in both pairings."""
    mem = report.get("memory_at_batch")
    if not mem or not mem["rows"]:
        return []
    lines = [
        f"Peak memory at batch {mem['batch']}, where activations rather than weights and optimizer state "
        "dominate (two steps, no timing):",
        "",
        "| case | peak MiB |",
        "|---|---:|",
    ]
    lines += [f"| {r['case']} | {r['peak_memory_bytes'] / MiB:,.1f} |" for r in mem["rows"]]
    lines += ["", "| pairing | latent | image | memory image/latent |", "|---|---|---|---:|"]
    lines += [f"| {r['pairing']} | {r['latent']} | {r['image']} | {r['memory_ratio']:.2f}x |" for r in mem["ratios"]]
    return lines


def predicted_lines(report: dict) -> list[str]:
    """The predicted section: labelled, apart from every measured row."""
    pred = report.get("predicted")
    if not pred:
        return []
    rows = [r for r in pred["rows"] if "skipped" not in r]
    lines = [
        f"**Predicted, not measured** (bench.predict: FakeTensorMode, no GPU): batch {pred['batch']}, bf16 "
        "autocast as a CUDA run; FLOPs exact (grouped/depthwise convolutions counted right), saved activations "
        "and peak memory simulated. Step time twice: a roofline lower bound (so its samples/s and MFU are upper "
        "bounds) and the calibrated estimate (bench.calibrated: efficiencies, per-kernel and dispatch costs fitted "
        "to published measurements), which the throughput ratios use.",
        "",
        "| device | case | GFLOP/sample | saved MB/sample | peak GiB | samples/s, roofline | samples/s, calibrated "
        "| MFU, roofline |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['device']} | {r['case']} | {r['flops_per_sample'] / 1e9:.3f} | "
        f"{r['saved_activation_bytes_per_sample'] / 1e6:.2f} | {r['peak_bytes'] / 2**30:.2f} | "
        f"{r['predicted_samples_per_s']:,.0f} | {_calibrated(r.get('calibrated_samples_per_s'))} | "
        f"{100 * r['mfu']:.1f} % |"
        for r in rows
    ]
    if pred["ratios"]:
        lines += [
            "",
            "| device | pairing | latent | image | throughput latent/image | memory image/latent |",
            "|---|---|---|---|---:|---:|",
        ]
        lines += [
            f"| {r['device']} | {r['pairing']} | {r['latent']} | {r['image']} | {r['throughput_ratio']:.2f}x"
            f"{_roofline(r.get('roofline_throughput_ratio'))} | {r['memory_ratio']:.2f}x |"
            for r in pred["ratios"]
        ]
    lines += end_to_end_lines(pred.get("end_to_end"))
    checked = [c for c in pred.get("vs_measured", []) if c["peak_ratio"]]
    if checked:
        ratios = [c["peak_ratio"] for c in checked]
        flops_equal = all(
            c["measured_flops_per_sample"] is not None
            and abs(c["flops_per_sample"] - c["measured_flops_per_sample"]) <= 1e-6 * c["flops_per_sample"]
            for c in checked
        )
        lines += [
            "",
            f"Checked against this run's measured CPU rows (the same simulation in fp32 with the CPU's "
            f"kernels, at the measured batch): FLOPs {'equal' if flops_equal else 'DIFFER'} in "
            f"{len(checked)} of {len(checked)} cases; simulated peak memory / measured peak RSS "
            f"{min(ratios):.2f}-{max(ratios):.2f} (median {sorted(ratios)[len(ratios) // 2]:.2f}; RSS also "
            "holds the allocator's caches and the framework's own buffers).",
        ]
    return lines


def end_to_end_lines(e2e: dict | None) -> list[str]:
    """The predicted end-to-end pairing: each side at min(its loader, its calibrated step), the rates it used."""
    if not e2e:
        return []
    if "skipped" in e2e:
        return ["", f"End-to-end pairing skipped: {e2e['skipped']}"]
    decode = e2e["decode_images_per_s_per_worker"]
    gathers = ", ".join(f"{device} {rate:,.0f}" for device, rate in e2e["resident_gather_samples_per_s"].items())
    lines = [
        "",
        f"**End to end, predicted** (bench.end_to_end): the paper protocol with each side fed as users train it. "
        f"The image side's files are decoded, resized to 256 px, flipped, rotated and normalised in a "
        f"{e2e['workers']}-worker DataLoader: one worker does {decode['png']:,.0f} PNG / {decode['jpg']:,.0f} "
        f"JPEG images/s on this CPU (measured), taken {e2e['workers']} times; the latent side's store is "
        f"resident on the device, a batch one gather there ({gathers} samples/s, calibrated). A store too "
        f"large for the device streams instead, at {e2e['streamed_loader_samples_per_s']:,.0f} samples/s on this "
        "CPU (measured): "
        "then the latent side runs at that rate. Each side runs at min(loader, calibrated step).",
        "",
        "| device | case | memory | fed by | loader samples/s | step samples/s | runs at | bound by |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['device']} | {r['case']} | {r['memory']} | {r['loader']} | {r['loader_samples_per_s']:,.0f} | "
        f"{r['step_samples_per_s']:,.0f} | {r['samples_per_s']:,.0f} | {r['bound']} |"
        for r in e2e["sides"]
    ]
    lines += ["", "| device | latent | image | throughput latent/image | memory image/latent |"]
    lines += ["|---|---|---|---:|---:|"]
    lines += [
        f"| {r['device']} | {r['latent']} | {r['image']} | {r['throughput_ratio']:.1f}x | {r['memory_ratio']:.1f}x |"
        for r in e2e["ratios"]
    ]
    return lines


def _calibrated(samples_per_s: float | None) -> str:
    return "-" if samples_per_s is None else f"{samples_per_s:,.0f}"  # a result from before the calibration


def _roofline(ratio: float | None) -> str:
    """After a calibrated ratio, the roofline's; a result from before the calibration has only the roofline's."""
    return " (roofline)" if ratio is None else f" (roofline {ratio:.2f}x)"


def ratio_lines(report: dict, image_model: str | None = None) -> list[str]:
    """The ratios table: every pair, or only those against ``image_model`` (e.g. the paper's resnet50)."""
    lines = [
        "| regime | pairing | latent | image | batches | throughput latent/image | memory image/latent |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for r in report["ratios"]:
        if image_model is not None and not r["image"].startswith(f"{image_model} @ "):
            continue
        lines.append(
            f"| {r['regime']} | {r.get('pairing', 'same source')} | {r['latent']} | {r['image']} | "
            f"{r['latent_batch']} / {r['image_batch']} | "
            f"{r['throughput_ratio']:.2f}x | {or_dash(r['memory_ratio'], '.2f')}{'x' if r['memory_ratio'] else ''} |"
        )
    return lines

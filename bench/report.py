"""`bench report RESULT.json...`: render `bench throughput` results as Markdown and PNG plots, one file or
several side by side (other devices, other commits); `--readme` writes the README's performance section from
throughput, kernels and loaders results. Every figure comes from the JSON, nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.result_file import save_json

SCHEMA = "latent-engine/bench-throughput/1"
MiB = 2**20


class SchemaError(ValueError):
    pass


def read(path: Path) -> dict:
    """A result file's JSON object, whatever wrote it."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SchemaError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(report, dict):
        raise SchemaError(f"{path}: holds a JSON {type(report).__name__}, not an object; pass files written by `bench`")
    return report


def load(path: Path) -> dict:
    report = read(path)
    schema = report.get("schema")
    if schema != SCHEMA:
        raise SchemaError(f"{path}: schema {schema!r} is not {SCHEMA!r}; pass files written by `bench throughput`")
    return report


def rate(r: dict) -> str:
    return f"{r['samples_per_s']:,.1f} ({r['iqr'][0]:,.1f}-{r['iqr'][1]:,.1f})"


def _opt(value, fmt: str) -> str:
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


def markdown(report: dict) -> str:
    p = report["protocol"]
    v = report["versions"]
    lines = [
        f"# bench throughput on {report['device']}",
        "",
        f"`{report['command']}` ({report['created']}); torch {v['torch']}, CUDA {v.get('cuda')}, "
        f"driver {v.get('driver')}, triton {v.get('triton')}; {report['torch_threads']} torch threads, "
        f"load average {report['load_average'][0]} before and {report['load_average'][1]} after "
        "(other work on the machine skews CPU timings)",
        "",
    ]
    if not report.get("complete", True):
        lines += ["**Incomplete**: the run was cut before every part ran; what is here was measured.", ""]
    if report["reduced"]:
        lines += ["**Reduced sizes** (" + "; ".join(report["reduced"]) + "). These are not the paper's sizes.", ""]
    lines += [
        "Protocol: " + "; ".join(f"{k}: {val}" for k, val in p.items()),
        "",
        f"Measured matmul rate: {report['matmul_peak']['flop_per_s'] / 1e12:.3f} TFLOP/s "
        f"({report['matmul_peak']['dtype']}, n={report['matmul_peak']['n']}), the reference of '% of matmul': "
        "one square matmul, not the hardware's peak, so a step whose kernels run faster exceeds 100 %.",
        "",
    ]
    if head := headline_lines(report):
        lines += ["## Headline", "", *head, ""]
    lines += [
        "## Training steps, inputs on the device",
        "",
        "| regime | case | batch | samples/s (IQR) | step ms | peak MiB | GFLOP/sample | % of matmul | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        gflop = None if r["flops_per_sample"] is None else r["flops_per_sample"] / 1e9
        util = None if r["utilisation"] is None else 100 * r["utilisation"]
        lines.append(
            f"| {r['regime']} | {r['case']} | {r['batch']} | {rate(r)} | {r['step_ms']:.1f} | "
            f"{r['peak_memory_bytes'] / MiB:,.1f} | {_opt(gflop, '.3f')} | {_opt(util, '.1f')} | {r['note']} |"
        )
    lines += ["", "## Ratios (this run's own timings)", "", *ratio_lines(report)]
    if mem := memory_lines(report):
        lines += ["", "## Memory where activations dominate", "", *mem]
    if report["batch_search"]:
        lines += ["", "## Largest batch that fits", "", "| case | batch | probes (batch: fits) |", "|---|---:|---|"]
        for s in report["batch_search"]:
            probes = ", ".join(f"{q['batch']}:{'y' if q['fits'] else 'n'}" for q in s["probes"])
            found = f"{s['batch']}{' (cap)' if s['capped'] else ''}" if s["batch"] is not None else "-"
            cut = f" ({s['cut']})" if s.get("cut") else ""
            lines.append(f"| {s['case']} | {found} | {probes}{cut} |")
    lines += _profile_lines(report.get("profile"))
    lines += _real_input_lines(report.get("real_input"))
    lines += _encode_lines(report.get("encode"))
    if pred := predicted_lines(report):
        lines += ["", "## At the paper's scale: predicted", "", *pred]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['case']}: {s['why']}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


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
            f"{h['throughput_ratio']:.2f}x | {_opt(h['memory_ratio'], '.2f')}x | "
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
        "and peak memory simulated, step time a roofline lower bound (so samples/s and MFU are upper bounds).",
        "",
        "| device | case | GFLOP/sample | saved MB/sample | peak GiB | samples/s | MFU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['device']} | {r['case']} | {r['flops_per_sample'] / 1e9:.3f} | "
        f"{r['saved_activation_bytes_per_sample'] / 1e6:.2f} | {r['peak_bytes'] / 2**30:.2f} | "
        f"{r['predicted_samples_per_s']:,.0f} | {100 * r['mfu']:.1f} % |"
        for r in rows
    ]
    if pred["ratios"]:
        lines += [
            "",
            "| device | pairing | latent | image | throughput latent/image | memory image/latent |",
            "|---|---|---|---|---:|---:|",
        ]
        lines += [
            f"| {r['device']} | {r['pairing']} | {r['latent']} | {r['image']} | {r['throughput_ratio']:.2f}x | "
            f"{r['memory_ratio']:.2f}x |"
            for r in pred["ratios"]
        ]
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
            f"{r['throughput_ratio']:.2f}x | {_opt(r['memory_ratio'], '.2f')}{'x' if r['memory_ratio'] else ''} |"
        )
    return lines


def _profile_lines(prof: dict | None) -> list[str]:
    if not prof:
        return []
    if "skipped" in prof:
        return ["", f"## Profile of the latent step: skipped ({prof['skipped']})"]
    lines = ["", f"## Profile of the latent step: {prof['case']}, batch {prof['batch']}", ""]
    if prof.get("note"):
        lines += [prof["note"], ""]
    lines += [
        "| fused kernels | compile | ms/step | noise injection | FiLM + norm | rest of model | optimizer | time |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for v in prof["variants"]:
        if "skipped" in v:
            lines.append(f"| {v['kernels']} | {v['compile']} | skipped: {v['skipped']} | | | | | |")
            continue
        s = v["shares"]
        lines.append(
            f"| {v['kernels']} | {v['compile']} | {v['total_ms_per_step']:.2f} | {100 * s['noise_injection']:.1f} % | "
            f"{100 * s['film_norm']:.1f} % | {100 * s['model']:.1f} % | {100 * s['optimizer']:.1f} % | {v['time']} |"
        )
    return lines


def _real_input_lines(real: dict | None) -> list[str]:
    if not real:
        return []
    if "skipped" in real:
        return ["", f"## Input path included: skipped ({real['skipped']})"]
    lines = [
        "",
        f"## Input path included ({real['image_size']} px, store from {real['autoencoder']})",
        "",
        "| space | case | what | batch | samples/s (IQR) | input path |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in real["rows"]:
        lines.append(f"| {r['space']} | {r['case']} | {r['what']} | {r['batch']} | {rate(r)} | {r['input_path']} |")
    return lines


def _encode_lines(enc: dict | None) -> list[str]:
    if not enc:
        return []
    if "skipped" in enc:
        return ["", f"## Encode cost: skipped ({enc['skipped']})"]
    lines = [
        "",
        "## Encode cost",
        "",
        f"{enc['family']} at {enc['image_size']} px (latent {'x'.join(map(str, enc['latent_shape']))}), batch "
        f"{enc['batch']}: {enc['images_per_s']:,.2f} images/s "
        f"(IQR {enc['iqr'][0]:,.2f}-{enc['iqr'][1]:,.2f}); {enc['note']}.",
    ]
    if enc.get("break_even") is None:
        lines.append(f"Break-even: not computed ({enc.get('why')}).")
    else:
        lines.append(
            f"Break-even for {enc['dataset_size']:,} images, {enc['latent']} (batch {enc['latent_batch']}) "
            f"against {enc['image']} (batch {enc['image_batch']}): {enc['break_even']}."
        )
    return lines


def side_by_side(reports: list[dict], names: list[str]) -> str:
    """One table of every (regime, case) across reports, then each report's headline."""
    lines = ["# bench throughput, side by side", ""]
    lines += [
        f"- **{n}**: {r['device']}, torch {r['versions']['torch']}, `{r['command']}`"
        + (" (reduced sizes)" if r["reduced"] else "")
        for n, r in zip(names, reports)
    ]
    keys = list(dict.fromkeys((r["regime"], r["case"]) for rep in reports for r in rep["rows"]))
    lines += [
        "",
        "| regime | case | " + " | ".join(f"{n} samples/s (batch) | {n} peak MiB" for n in names) + " |",
        "|---|---|" + "---:|---:|" * len(names),
    ]
    for regime, case in keys:
        cells = []
        for rep in reports:
            row = next((r for r in rep["rows"] if (r["regime"], r["case"]) == (regime, case)), None)
            cells += (
                ["-", "-"]
                if row is None
                else [f"{row['samples_per_s']:,.1f} ({row['batch']})", f"{row['peak_memory_bytes'] / MiB:,.1f}"]
            )
        lines.append(f"| {regime} | {case} | " + " | ".join(cells) + " |")
    lines += ["", "| result | headline pair | throughput latent/image | memory image/latent |", "|---|---|---:|---:|"]
    for n, rep in zip(names, reports):
        h = headline(rep)
        lines.append(
            f"| {n} | - | - | - |"
            if h is None
            else f"| {n} | {h['latent']} vs {h['image']} | {h['throughput_ratio']:.2f}x | "
            f"{_opt(h['memory_ratio'], '.2f')}x |"
        )
    return "\n".join(lines) + "\n"


def plots(report: dict, stem: Path) -> list[Path]:
    """Throughput and memory bars (log scale) at equal batch, and samples/s against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eq = [r for r in report["rows"] if r["regime"] == "equal batch"]
    if not eq:
        return []
    written = []
    colours = ["tab:blue" if r["space"] == "latent" else "tab:red" for r in eq]
    for key, label, scale, suffix in (
        ("samples_per_s", "samples/s", 1, "throughput"),
        ("peak_memory_bytes", "peak memory (MiB)", MiB, "memory"),
    ):
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(eq) + 1.5))
        ax.barh([r["case"] for r in eq], [max(r[key] / scale, 1e-6) for r in eq], color=colours)
        ax.set_xscale("log")
        ax.set_xlabel(f"{label}, batch {eq[0]['batch']} (log scale; blue latent, red image)")
        ax.set_title(f"{report['device']}" + (" (reduced sizes)" if report["reduced"] else ""), fontsize=9)
        ax.invert_yaxis()
        fig.tight_layout()
        written.append(stem.with_name(f"{stem.name}-{suffix}.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for case in dict.fromkeys(r["case"] for r in report["rows"]):
        pts = sorted((r["batch"], r["samples_per_s"]) for r in report["rows"] if r["case"] == case)
        ax.plot(*zip(*pts), marker="o", label=case, ls="-" if "px (" not in case else "--")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples/s")
    ax.legend(fontsize=6)
    fig.tight_layout()
    written.append(stem.with_name(f"{stem.name}-batch.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def write_outputs(report: dict, out: Path) -> list[Path]:
    """JSON at ``out``, Markdown and PNGs beside it; returns the paths."""
    save_json(report, out)
    md = out.with_suffix(".md")
    md.write_text(markdown(report))
    return [out, md, *(plots(report, out.with_suffix("")) if report["rows"] else [])]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "results",
        nargs="+",
        type=Path,
        help="JSON files written by `bench throughput` (with --readme also `bench kernels`, `bench loaders`)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown here too (default: print only)")
    parser.add_argument("--readme", type=Path, help="replace the performance section between this README's markers")
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --readme: change nothing, exit 1 if the section is not what the files render",
    )
    args = parser.parse_args(argv)
    if args.readme:
        if args.out:
            parser.error("--out: not with --readme (the section goes into the README)")
        return _readme(args.readme, args.results, args.check)
    if args.check:
        parser.error("--check: only with --readme README.md")
    try:
        reports = [load(p) for p in args.results]
    except SchemaError as err:
        print(f"bench report: {err}", file=sys.stderr)
        return 2
    text = markdown(reports[0]) if len(reports) == 1 else side_by_side(reports, [p.stem for p in args.results])
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


def _readme(readme: Path, results: list[Path], check: bool) -> int:
    from bench.readme_section import update  # here, not at the top: it builds on this module

    try:
        changed = update(readme, results, write=not check)
    except (OSError, ValueError) as err:
        print(f"bench report: {err}", file=sys.stderr)
        return 2
    if check and changed:
        print(
            f"bench report: {readme}: the performance section is not what the {len(results)} result files render; "
            "run the same command without --check to rewrite it",
            file=sys.stderr,
        )
        return 1
    print(f"{readme}: performance section " + ("rewritten" if changed else "up to date"))
    return 0

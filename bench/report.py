"""`bench report RESULT.json...`: render `bench throughput` results as Markdown and PNG plots, one file or
several side by side (other devices, other commits); `--page` rewrites the generated sections of the documentation
(README.md's headline, docs/results.md) from throughput, kernels, loaders, fidelity and gap results. Every figure
comes from the JSON, nothing is typed in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.readme_section import SchemaError, read, update
from bench.result_file import save_json
from bench.throughput_tables import (
    SCHEMA,
    MiB,
    headline,
    headline_lines,
    memory_lines,
    or_dash,
    predicted_lines,
    rate,
    ratio_lines,
)


def load(path: Path) -> dict:
    report = read(path)
    schema = report.get("schema")
    if schema != SCHEMA:
        raise SchemaError(f"{path}: schema {schema!r} is not {SCHEMA!r}; pass files written by `bench throughput`")
    return report


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
            f"{r['peak_memory_bytes'] / MiB:,.1f} | {or_dash(gflop, '.3f')} | {or_dash(util, '.1f')} | {r['note']} |"
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
            f"{or_dash(h['memory_ratio'], '.2f')}x |"
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
        help="JSON files written by `bench throughput` (with --page also `bench kernels`, `bench loaders`, "
        "`bench fidelity`, `engine gap`)",
    )
    parser.add_argument("--out", type=Path, help="write the Markdown here too (default: print only)")
    parser.add_argument(
        "--page",
        type=Path,
        action="append",
        help="rewrite the generated sections between this page's markers (repeat for several pages, "
        "e.g. --page README.md --page docs/results.md)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="with --page: change nothing, exit 1 if a section is not what the files render",
    )
    args = parser.parse_args(argv)
    if args.page:
        if args.out:
            parser.error("--out: not with --page (the sections go into the pages)")
        return _pages(args.page, args.results, args.check)
    if args.check:
        parser.error("--check: only with --page, e.g. --page docs/results.md")
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


def _pages(pages: list[Path], results: list[Path], check: bool) -> int:
    """Every page's generated sections, rendered (names of result files relative to the working directory)."""
    try:
        changed = [page for page in pages if update(page, results, write=not check)]
    except (OSError, ValueError) as err:
        print(f"bench report: {err}", file=sys.stderr)
        return 2
    if check and changed:
        print(
            f"bench report: {', '.join(map(str, changed))}: generated sections are not what the {len(results)} "
            "result files render; run the same command without --check to rewrite them",
            file=sys.stderr,
        )
        return 1
    for page in pages:
        print(f"{page}: generated sections " + ("rewritten" if page in changed else "up to date"))
    return 0

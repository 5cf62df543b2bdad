"""The generated sections of the documentation pages, rendered from committed result files (`bench report --page`).

Nothing in a section is typed: every figure, device, version and command comes from a JSON file that
`bench throughput`, `bench kernels`, `bench loaders`, `bench fidelity` or `engine gap` wrote, each block names that
file and the command that reproduces it, and `bench report --page PAGE ... --check` fails when the two drift apart.
A page says which sections it holds by their marker lines: `results` (every block, docs/results.md) and `headline`
(the learnability gap per autoencoder in one table, README.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench.throughput_tables import (
    SCHEMA,
    MiB,
    headline,
    headline_lines,
    memory_lines,
    predicted_lines,
    rate,
    ratio_lines,
)

# kind -> the command that writes it; the order of the blocks: what is learnt, then speed
KINDS = {
    "fidelity": "bench fidelity",
    "evaluation": "bench evaluation",
    "gap": "engine gap",
    "latent-models": "bench latent-models",
    "throughput": "bench throughput",
    "kernels": "bench kernels",
    "loaders": "bench loaders",
}
GAP_SCHEMA = "latent-engine/gap/1"  # engine gap
FIDELITY_SCHEMA = "latent-engine/fidelity/1"  # bench fidelity
EVALUATION_SCHEMA = "latent-engine/evaluation/1"  # bench evaluation: a run's eval.json with where it ran
LATENT_MODELS_SCHEMA = "latent-engine/latent-models/1"  # bench latent-models: one-model latent studies side by side


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


def kind(report: dict, path: Path) -> str:
    """Which command wrote the result, told by its content (file names can be anything)."""
    if report.get("schema") == SCHEMA:
        return "throughput"
    if report.get("schema") == GAP_SCHEMA:
        return "gap"
    if report.get("schema") == FIDELITY_SCHEMA:
        return "fidelity"
    if report.get("schema") == EVALUATION_SCHEMA:
        return "evaluation"
    if report.get("schema") == LATENT_MODELS_SCHEMA:
        return "latent-models"
    results = report.get("results")
    if (
        report.get("schema") == 1
        and isinstance(results, list)
        and all(isinstance(r, dict) and "kernel" in r for r in results)
    ):
        return "kernels"
    if str(report.get("command", "")).startswith("bench loaders"):
        return "loaders"
    raise SchemaError(
        f"{path}: not a result of {', '.join(f'`{c}`' for c in KINDS.values())} "
        f"(schema {report.get('schema')!r}, command {report.get('command')!r}); pass only files they wrote"
    )


def _source(name: str, report: dict, *versions: str) -> str:
    """The file, the command that reproduces it and the versions it ran with (those recorded, CUDA only on GPU)."""
    v = report["versions"]
    return (
        f"From `{name}`, written by `{report['command']}`; "
        + ", ".join(f"{k.replace('cuda', 'CUDA')} {v[k]}" for k in ("torch", *versions) if v.get(k))
        + "."
    )


def _shape(case: str) -> str:
    """The latent shape or image size of a case name: 'convnext-t-film @ flux2-256 (32x32x32)' -> 'flux2-256'."""
    return case.split(" @ ")[1].split(" (")[0]


def _memory_mode(report: dict) -> str:
    """', lean steps' for a --memory lean run: its section stands beside the plain run's of the same machine."""
    return ", lean steps" if report["protocol"].get("memory_mode", "plain") == "lean" else ""


def _throughput(report: dict, name: str) -> list[str]:
    """Every measured equal-batch row, but ratios and predictions only at the headline's latent shape (FLUX.2):
    the README stays readable, and the Markdown beside the JSON has every pairing of every shape."""
    lines = [
        f"### Training steps, latent vs image space{_memory_mode(report)}: {report['device']}"
        + (" (reduced sizes)" if report["reduced"] else ""),
        "",
    ]
    if report["reduced"]:
        lines += ["**Reduced sizes, not the paper's**: " + "; ".join(report["reduced"]) + ".", ""]
    lines += [_source(name, report, "cuda", "triton"), ""]
    if table := headline_lines(report):
        lines += [*table, ""]
    lines += ["| case | batch | samples/s (IQR) | peak MiB |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['case']} | {r['batch']} | {rate(r)} | {r['peak_memory_bytes'] / MiB:,.1f} |"
        for r in report["rows"]
        if r["regime"] == "equal batch"
    ]
    if pair := headline(report):
        shape, image_model = _shape(pair["latent"]), pair["image"].split(" @ ")[0]
        ratios = [r for r in report["ratios"] if _shape(r["latent"]) == shape]
        lines += ["", f"Ratios at {shape}, every latent model:", ""]
        lines += ratio_lines({**report, "ratios": ratios}, image_model)
    if mem := memory_lines(report):
        lines += ["", *mem]
    if pred := report.get("predicted"):
        latent = [r for r in pred["rows"] if r.get("space") == "latent" and "skipped" not in r]
        flux2 = [r for r in latent if _shape(r["case"]).startswith("flux2-")] or latent
        top = max((r["source_px"] for r in flux2), default=None)
        shape = next((_shape(r["case"]) for r in flux2 if r["source_px"] == top), None)
        kept = [r for r in pred["rows"] if r.get("space") == "image" or _shape(r["case"]) == shape]
        pred = {**pred, "rows": kept, "ratios": [r for r in pred["ratios"] if _shape(r["latent"]) == shape]}
        lines += ["", *predicted_lines({**report, "predicted": pred})]
    stem = name.removesuffix(".json")
    lines += ["", f"Every case, pairing, batch search, profile and predicted shape: `{stem}.md`."]
    if not report.get("complete", True):
        lines += ["", "**Incomplete run**: cut before every part ran; the figures above are what it measured."]
    return lines


def _kernels(report: dict, name: str) -> list[str]:
    lines = [f"### Fused kernels: {report['device']}", "", _source(name, report, "triton"), ""]
    if report["reference_only"]:
        return lines + [
            f"{report['note']} ({len(report['results'])} reference timings; "
            f"copy bandwidth {report['copy_bandwidth']['gb_per_s']:.1f} GB/s.)"
        ]
    lines += ["| kernel | shape | mode | impl | median ms | GB/s | % of copy |", "|---|---|---|---|---:|---:|---:|"]
    lines += [
        f"| {r['kernel']} | {'x'.join(map(str, r['shape']))} | {r['mode']} | {r['impl']} | {r['median_ms']:.4f} | "
        f"{r['gb_per_s']:.1f} | {100 * r['fraction_of_copy']:.1f} |"
        for r in report["results"]
    ]
    return lines + [f"| {s['kernel']} | - | - | {s['impl']}: skipped | {s['reason']} | | |" for s in report["skipped"]]


def _loaders(report: dict, name: str) -> list[str]:
    lines = [
        f"### Loaders: {report['device']}",
        "",
        _source(name, report),
        "",
        f"{report['samples']:,} latents of {'x'.join(map(str, report['latent_shape']))} fp16, batch {report['batch']}, "
        f"torch threads: {report['threads']}; a device copy of the same bytes: {report['copy_GB_per_s']:.2f} GB/s.",
        "",
        "| loader | format | samples/s | GB/s |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['loader']} | {r['format']} | {r['samples_per_s']:,} | {r['GB_per_s']:.3f} |" for r in report["results"]
    ]
    return lines + [f"| {s['loader']} | {s['format']} | skipped: {s['why']} | |" for s in report["skipped"]]


def _gap(report: dict, name: str) -> list[str]:
    from engine.gap.report import autoencoder_lines

    study = report["study"]
    lines = [
        f"### The learnability gap on the embedded default: {report['device']}",
        "",
        f"{_source(name, report)} Units: {', '.join(study['units'])}; image model {study['image_model']}, "
        f"latent model {study['latent_model']}. Test metrics, mean ± standard deviation over units; gaps are "
        "paired by unit.",
        "",
        "Settings that differ from the paper's: " + "; ".join(study["differs_from_paper"]) + ".",
        "",
    ]
    for label, ae in report["autoencoders"].items():
        lines += [*[line.replace("### ", "#### ", 1) for line in autoencoder_lines(label, ae)], ""]
    return lines[:-1]


def _fidelity(report: dict, name: str) -> list[str]:
    t = report["shipped_training"]
    lines = [
        f"### How faithfully the default autoencoders reconstruct: {report['device']}",
        "",
        f"{_source(name, report)} Data: {report['dataset']}; {report['metric']}.",
        "",
        "| autoencoder | pretrained | latent | PSNR dB (lowest) | SSIM |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['autoencoder']} | {str(r['pretrained']).lower()} | {'x'.join(map(str, r['latent_shape']))} | "
        f"{r['psnr_db']:.2f} ({r['psnr_db_min']:.2f}) | {r['ssim']:.4f} |"
        for r in report["rows"]
    ]
    return lines + [
        "",
        f"The shipped weights were trained by `{t['command']}`: {t['steps']} steps of batch {t['batch_size']} on "
        f"{t['threads']} CPU threads, {t['wall_s'] / 60:.1f} minutes wall time including data rendering and "
        f"evaluation; weights {t['weights_bytes'] / 2**20:.1f} MiB.",
    ]


def _with_interval(value: float | None, interval: list | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def _evaluation(report: dict, name: str) -> list[str]:
    test, folder = report["evaluation"]["test"], Path(name).parent.as_posix()
    ci, boot = test["intervals"], test["bootstrap"]
    clustered = f"resampled by {boot['clustered_by']}" if boot.get("clustered_by") else "images resampled"
    lines = [
        f"### Per-class test metrics and calibration, `{report['name']}`: {report['device']}",
        "",
        f"{_source(name, report)} Intervals: {boot['level']:.0%} {boot['method']}, {boot['resamples']} "
        f"resamples (seed {boot['seed']}), {clustered}.",
        "",
        "| metric | test [interval] |",
        "|---|---:|",
    ]
    lines += [
        f"| {metric.replace('_', ' ')} | {_with_interval(test.get(metric), ci.get(metric))} |"
        for metric in ("balanced_accuracy", "auroc", "mcc")
    ]
    ece = test["calibration"]["ece"]
    lines += [
        f"| expected calibration error ({test['calibration']['definition']}) | {_with_interval(ece, ci.get('ece'))} |",
        "",
        "| class | support | sensitivity | specificity | PPV | F1 | AUROC | AUPRC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    columns = ("sensitivity", "specificity", "ppv", "f1", "auroc", "auprc")
    lines += [
        f"| {cls} | {row['support']} | "
        + " | ".join(_with_interval(row.get(c), ci.get(f"{c}/{cls}")) for c in columns)
        + " |"
        for cls, row in test["per_class"].items()
    ]
    figures = report["figures"]  # beside the result file; the results section lives one folder down, in docs/
    if figures:
        lines += ["", " ".join(f"![{f.replace('_', ' ')}](../{folder}/{png})" for f, png in figures.items())]
    return lines


def _latent_models(report: dict, name: str) -> list[str]:
    budget, chance = report["budget"], report["chance"]["balanced_accuracy"]
    shape = "x".join(map(str, report["latent_shape"]))
    lines = [
        f"### Latent models on one store: {report['device']}",
        "",
        f"From `{name}`, written by `bench latent-models` from one `engine gap --arms latent` study per model "
        f"(`{report['models'][0]['command']}`, and the same with each model); torch {report['versions']['torch']}. "
        f"Store `{report['store']}` ({shape} latents); units {', '.join(report['units'])}; {budget['epochs']} epochs, "
        f"batch {budget['batch_size']}, loss {budget['loss']}. Test balanced accuracy (chance {chance:g}) and "
        "training samples/s: mean ± sd over units, measured. Parameters and the activation bytes one training step "
        f"keeps for its backward (per sample, one fp32 CPU step of batch {report['count_batch']}, "
        "`bench.saved_activations`) are counted, not measured.",
        "",
        "| latent model | parameters | balanced accuracy | AUROC | samples/s | kept for backward, plain (counted) "
        "| lean (counted) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["models"]:
        kept = row["saved_bytes_per_sample_counted"]
        lines.append(
            f"| {row['model']} | {row['parameters'] / 1e6:.2f} M | {_mean_sd(row['balanced_accuracy'])} | "
            f"{_mean_sd(row['auroc'])} | {_mean_sd(row['samples_per_s'], '.0f')} | {kept['plain'] / 1024:,.0f} KiB | "
            f"{kept['lean'] / 1024:,.0f} KiB |"
        )
    return lines


BLOCKS = {
    "evaluation": _evaluation,
    "latent-models": _latent_models,
    "fidelity": _fidelity,
    "gap": _gap,
    "throughput": _throughput,
    "kernels": _kernels,
    "loaders": _loaders,
}


def _name(path: Path, root: Path) -> str:
    """The path as a reader types it from ``root`` (the repository root): relative where it lies below it."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _checked(path: Path, what: str, render_block: Callable[[dict, str], list[str]], report: dict, name: str):
    """``render_block(report, name)``; a result missing a field its kind writes is refused by name."""
    try:
        return render_block(report, name)
    except (KeyError, TypeError) as err:
        raise SchemaError(
            f"{path}: not a complete `{KINDS[what]}` result ({type(err).__name__}: {err}); "
            f"rewrite it with `{KINDS[what]}`"
        ) from None


def render(paths: list[Path], root: Path | None = None) -> str:
    """The results section: one block per result file, throughput first; file names relative to ``root`` (cwd)."""
    if not paths:
        raise ValueError("no result files given; pass the JSON files under bench/results/")
    root = Path.cwd() if root is None else root
    blocks = []
    for path in paths:
        report = read(path)
        what = kind(report, path)
        blocks.append((list(KINDS).index(what), _checked(path, what, BLOCKS[what], report, _name(path, root))))
    blocks.sort(key=lambda b: b[0])  # stable: files of one kind keep the order given
    return "\n\n".join("\n".join(lines) for _, lines in blocks) + "\n"


def _gap_headline(report: dict, name: str) -> list[str]:
    """Test balanced accuracy of every arm and both gaps, one row per autoencoder."""
    study = report["study"]
    arms = study["arms"]
    first = next(iter(report["autoencoders"].values()))
    lines = [
        f"Test balanced accuracy (chance {first['chance']['balanced_accuracy']:g}), mean ± sd over "
        f"{len(study['units'])} units ({', '.join(study['units'])}); image model {study['image_model']}, latent "
        f"model {study['latent_model']}; gaps paired by unit. {_source(name, report)} On {report['device']}.",
        "",
        "| autoencoder | pretrained | latents | "
        + " | ".join(arms)
        + " | fidelity gap (image - recon) | learnability gap (recon - latent) |",
        "|---|---|---|" + "---:|" * (len(arms) + 2),
    ]
    for label, ae in report["autoencoders"].items():
        accuracy = {arm: ae["arms"][arm]["balanced_accuracy"] for arm in arms if arm in ae["arms"]}
        gaps = ae["gaps"].get("balanced_accuracy", {})
        cells = [_mean_sd(accuracy[arm]) if arm in accuracy else "-" for arm in arms]
        cells += [_mean_sd(gaps[g], "+.3f") if gaps.get(g) else "-" for g in ("fidelity_gap", "learnability_gap")]
        pretrained = str(ae["autoencoder"]["pretrained"]).lower()
        shape = "x".join(map(str, ae["latent_shape"]))
        lines.append(f"| {label} | {pretrained} | {shape} of {ae['image_size']} px | " + " | ".join(cells) + " |")
    return lines + _gap_costs(report)


def _gap_costs(report: dict) -> list[str]:
    """Per autoencoder, what each arm costs and recovers of the learnability gap: the study report's own table
    (a gap.json written before arms recorded their training speed has none)."""
    from engine.gap.report import cost_blocks
    from engine.report_page import markdown

    lines = []
    for label, ae in report["autoencoders"].items():
        if blocks := cost_blocks(ae):
            lines += ["", f"What each arm costs and recovers, {label}:", "", markdown(blocks).strip()]
    return lines


def _mean_sd(stat: dict, fmt: str = ".3f") -> str:
    mean = format(stat["mean"], fmt)
    return mean if stat["n"] == 1 else f"{mean} ± {format(stat['sd'], fmt.lstrip('+'))}"


def render_headline(paths: list[Path], root: Path | None = None) -> str:
    """The headline section: the learnability gap of every `engine gap` result among ``paths``, one table each."""
    root = Path.cwd() if root is None else root
    found = [(path, report) for path in paths if kind(report := read(path), path) == "gap"]
    if not found:
        raise ValueError(
            "the headline section needs an `engine gap` result; pass its gap.json (e.g. bench/results/gap-*.json)"
        )
    blocks = [_checked(path, "gap", _gap_headline, report, _name(path, root)) for path, report in found]
    return "\n\n".join("\n".join(lines) for lines in blocks) + "\n"


# section name -> its renderer; a page holds a section between begin(name) and end(name)
SECTIONS: dict[str, Callable[[list[Path], Path | None], str]] = {"results": render, "headline": render_headline}


def begin(section: str) -> str:
    return f"<!-- {section}:begin (generated by: bench report --page PAGE bench/results/*.json) -->"


def end(section: str) -> str:
    return f"<!-- {section}:end -->"


def update(page: Path, paths: list[Path], root: Path | None = None, write: bool = True) -> bool:
    """Replace what lies between each of the page's begin and end lines with its section rendered from ``paths``
    (names relative to ``root``, default cwd); True if that changes the page (with write=False the page is left
    alone and the answer says whether it would change)."""
    page = Path(page)
    text = page.read_text()
    lines = text.splitlines(keepends=True)
    marks = [line.strip() for line in lines]
    held = [s for s in SECTIONS if begin(s) in marks or end(s) in marks]
    if not held:
        raise ValueError(
            f"{page}: needs the line {begin('results')} (and {end('results')}) where the results go, "
            f"or the pair for one of {', '.join(SECTIONS)}"
        )
    spans = []
    for section in held:
        for marker, where in ((begin(section), "begins"), (end(section), "ends")):
            if marks.count(marker) != 1:
                raise ValueError(
                    f"{page}: needs the line {marker} exactly once (found {marks.count(marker)}); "
                    f"add it where the {section} section {where}"
                )
        first, last = marks.index(begin(section)), marks.index(end(section))
        if first > last:
            raise ValueError(f"{page}: the line {end(section)} comes before {begin(section)}; put the begin first")
        spans.append((first, last, section))
    spans.sort()
    new, at = [], 0
    for first, last, section in spans:
        if first < at:
            raise ValueError(f"{page}: the {section} section begins inside another; give each its own lines")
        new += [*lines[at : first + 1], "\n", SECTIONS[section](paths, root), "\n"]
        at = last
    new_text = "".join(new + lines[at:])
    if write and new_text != text:
        page.write_text(new_text)
    return new_text != text

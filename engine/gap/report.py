"""The gap report for a person: gap.md and gap.html (one page: protocol, tables with intervals, plots) and the PNG
plots, rendered from gap.json's content only, its rows and their order from the arm table."""

from __future__ import annotations

from pathlib import Path

from engine.gap import arms as table
from engine.metrics.figure_file import png_axes
from engine.report_page import Block, Bullets, Figure, Heading, Page, Paragraph, Table, markdown

NAMES = {
    "balanced_accuracy": "balanced accuracy",
    "auroc": "AUROC",
    "mcc": "MCC",
    "medmnist_acc": "MedMNIST ACC",
    "medmnist_auc": "MedMNIST AUC",
}


METRICS = ("balanced_accuracy", "auroc", "mcc")  # every run's test metrics with their intervals


def _pm(s: dict) -> str:
    return f"{s['mean']:.3f}" if s["n"] == 1 else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _words(key: str) -> str:
    """A gap.json key as the report writes it: noise_conditioning -> noise conditioning."""
    return key.replace("_", " ")


def _interval(bounds: list[float] | None, fmt: str = "+.3f", scale: float = 1.0, unit: str = "") -> str:
    """A bootstrap interval as '[low, high]'; '-' where gap.json has none (written before intervals, or undefined)."""
    return "-" if bounds is None else f"[{scale * bounds[0]:{fmt}}, {scale * bounds[1]:{fmt}}]{unit}"


def _gap_row(name: str, g: dict | None, intervals: bool) -> list[str]:
    """One gap's row; ``intervals`` adds the bootstrap interval column (gap.json written since it has them)."""
    last = ["-"] if intervals else []
    if g is None:
        return [name, "-", "-", "-", "-", *last]
    if intervals:
        last = [_interval(g.get("interval"))]
    return [name, f"{g['mean']:+.3f} ± {g['sd']:.3f}", str(g["n"]), _p(g["t_p"]), _p(g["wilcoxon_p"]), *last]


def _recovered(what: str, value: float | None, bounds: list[float] | None) -> str:
    shown = "-" if value is None else f"{100 * value:.0f} %"
    interval = "" if bounds is None else f" (95 % interval {_interval(bounds, '.0f', 100, ' %')})"
    return f"{_words(what)} recovers {shown}{interval}"


def _units_interval(s: dict) -> str:
    """An arm's interval over units; '-' for one unit (a resample of one unit is that unit)."""
    return _interval(s["interval"], ".3f") if s["n"] > 1 else "-"


def autoencoder_blocks(label: str, ae: dict) -> list[Block]:
    """One autoencoder's summary: arms, gaps with their tests, recovered fractions, diagnostics."""
    arms = [a for a in table.names() if a in ae["arms"]]
    metrics = [k for k in NAMES if arms and k in ae["arms"][arms[0]]]
    units_intervals = bool(arms) and "interval" in ae["arms"][arms[0]]["balanced_accuracy"]
    shape = "x".join(map(str, ae["latent_shape"]))
    arm_table = Table(
        ["arm", "runs", *(NAMES[k] for k in metrics)]
        + (["balanced accuracy 95 % interval (bootstrap over units)"] if units_intervals else []),
        [
            [arm, str(len(ae["arms"][arm]["runs"])), *(_pm(ae["arms"][arm][k]) for k in metrics)]
            + ([_units_interval(ae["arms"][arm]["balanced_accuracy"])] if units_intervals else [])
            for arm in arms
        ],
    )
    g = ae["gaps"].get("balanced_accuracy", {})
    intervals = "bootstrap" in g  # a gap.json written before the intervals renders as it did
    gap_table = Table(
        ["balanced accuracy", "mean ± sd of paired differences", "n", "paired t p", "Wilcoxon p"]
        + (["95 % interval (bootstrap over units)"] if intervals else []),
        [_gap_row(arm.gap_title, g.get(arm.gap.key), intervals) for arm in table.ARMS if arm.gap],
    )
    blocks: list[Block] = [
        Heading(
            f"{label}: {ae['autoencoder']['family']} (pretrained: {str(ae['autoencoder']['pretrained']).lower()}), "
            f"latents {shape} of {ae['image_size']} px images",
            level=3,
        ),
        arm_table,
        gap_table,
    ]
    rec = g.get("recovered", {})
    if rec:
        notes = [arm.recovers for arm in table.ARMS if arm.recovers and arm.recovers.key in rec]
        blocks.append(
            Paragraph(
                "Of the learnability gap (means): "
                + "; ".join(_recovered(what, v, g.get("recovered_interval", {}).get(what)) for what, v in rec.items())
                + f" ({'; '.join(f'{_words(r.key)}: {r.note}' for r in notes)})."
            )
        )
    d = ae["diagnostics"]
    probe, pca, fid, items = d["linear_probe"], d["pca"], d.get("fidelity"), []
    if fid:
        items.append(
            f"reconstruction fidelity: PSNR {fid['psnr_db']:.2f} dB (lowest {fid['psnr_db_min']:.2f}), "
            f"SSIM {fid['ssim']:.3f} ({fid['rows']} of {fid['split']})"
        )
    if probe:
        items.append(
            f"linear probe on pooled latents (train -> test): balanced accuracy "
            f"{probe['balanced_accuracy']:.3f}, AUROC {probe['auroc']:.3f}"
        )
    items.append(
        f"PCA participation ratio: {pca['participation_ratio']:.1f} of {pca['dims']} dimensions "
        f"({100 * pca['fraction_of_dims']:.1f} %)"
    )
    items.append("channel std (before standardisation): " + ", ".join(f"{s:.3g}" for s in d["channel_std"]))
    if eq := d.get("equivariance"):
        items.append(
            "equivariance error ||E(Tx) - T E(x)|| / ||E(x)||: "
            + ", ".join(f"{t} {e:.3f}" for t, e in eq["error"].items())
            + " (0: the latent of a flipped or turned image is the turned latent)"
        )
    return [*blocks, Bullets(items)]


def autoencoder_lines(label: str, ae: dict) -> list[str]:
    """The summary as Markdown lines (the README's and docs/results.md's gap section)."""
    return markdown(autoencoder_blocks(label, ae)).rstrip("\n").split("\n")


def run_blocks(ae: dict) -> list[Block]:
    """Every run's test metrics with their intervals over test samples, and every arm's per-class sensitivity;
    nothing for a gap.json written before runs carried them."""
    arms = [a for a in table.names() if a in ae["arms"]]
    runs = [(arm, unit, r) for arm in arms for unit, r in ae["arms"][arm]["runs"].items() if "test_intervals" in r]
    blocks: list[Block] = []
    if runs:
        over = "patients" if runs[0][2]["test_bootstrap"]["clustered_by"] == "patient" else "test images"

        def cell(r: dict, key: str) -> str:
            value = r["ece"] if key == "ece" else r["test"][key]
            return f"{value:.3f} {_interval(r['test_intervals'].get(key), '.3f')}"

        blocks.append(
            Table(
                ["arm", "unit", "balanced accuracy [95 %]", "AUROC [95 %]", "MCC [95 %]", "ECE [95 %]"],
                [
                    [arm, unit, *(cell(r, k) for k in ("balanced_accuracy", "auroc", "mcc", "ece"))]
                    for arm, unit, r in runs
                ],
                caption=f"Every run's test metrics with percentile bootstrap intervals over {over} "
                f"({runs[0][2]['test_bootstrap']['resamples']:,} resamples; ECE: top-label, 15 bins).",
            )
        )
    with_classes = [arm for arm in arms if "sensitivity" in ae["arms"][arm]]
    if with_classes:
        classes = list(ae["arms"][with_classes[0]]["sensitivity"])
        blocks.append(
            Table(
                ["arm", *classes],
                [
                    [arm, *("-" if (s := ae["arms"][arm]["sensitivity"][c]) is None else _pm(s) for c in classes)]
                    for arm in with_classes
                ],
                caption="Test sensitivity (recall) of every class, mean ± sd over units: the macro mean hides "
                "the rare class.",
            )
        )
    return blocks


def cost_blocks(ae: dict) -> list[Block]:
    """What each arm's accuracy costs: its measured training speed, its cost per sample relative to the latent and
    recon arms, and what it recovers of the learnability gap; nothing for a gap.json without speeds."""
    arms = [a for a in table.names() if "samples_per_s" in ae["arms"].get(a, {})]
    if not arms:
        return []
    speed = {a: ae["arms"][a]["samples_per_s"]["mean"] for a in arms}
    g = ae["gaps"].get("balanced_accuracy", {})
    recovers = {arm.name: arm.recovers.key for arm in table.ARMS if arm.recovers}

    def relative(arm: str, to: str) -> str:
        return f"{speed[to] / speed[arm]:.2f}" if to in speed else "-"

    def recovered(arm: str) -> str:
        key = recovers.get(arm)
        if key is None or g.get("recovered", {}).get(key) is None:
            return "-"
        bounds = g.get("recovered_interval", {}).get(key)
        return f"{100 * g['recovered'][key]:.0f} %" + ("" if bounds is None else f" {_interval(bounds, '.0f', 100)}")

    def gain(arm: str) -> str:
        key = recovers.get(arm)
        paired = g.get("gain", {}).get(key) if key else None
        return "-" if paired is None else f"{paired['mean']:+.3f} (t p {_p(paired['t_p'])})"

    return [
        Table(
            [
                "arm",
                "training samples/s",
                "cost per sample, x latent",
                "x recon",
                "recovers of the gap [95 %]",
                "gain over its base arm (paired)",
            ],
            [
                [a, f"{speed[a]:,.0f}", relative(a, table.LATENT), relative(a, table.RECON), recovered(a), gain(a)]
                for a in arms
            ],
            caption="Measured training speed (median over each run's epochs, mean over units; the steps alone) "
            "and what each arm buys with it. A recovered fraction compares the arm with its base arm's gap "
            "(latent's learnability gap; latent-plain's for latent), with its bootstrap interval over units and "
            "the paired t-test of the arm's balanced accuracy against its base arm's.",
        ),
    ]


def report_page(report: dict) -> Page:
    """The study report a person reads: what ran and how it differs from the paper, the plots, every
    autoencoder's tables with their intervals, and what was skipped. gap.md and gap.html are this page."""
    study = report["study"]
    missing = report.get("missing", [])  # a gap.json written before shards has none
    page = Page("Learnability gap" + (" (INCOMPLETE)" if missing else ""))
    page.add(
        Paragraph(
            f"Arms {', '.join(study['arms'])}; units {', '.join(study['units'])}; "
            f"image model {study['image_model']}, latent model {study['latent_model']}; on {study['device']}."
        )
    )
    if missing:
        page.add(
            Paragraph(
                f"INCOMPLETE: {len(missing)} runs of the study are missing (not finished yet: a shard still to run "
                "or killed); every figure below is over the finished runs only. Missing:"
            ),
            Bullets([f"{m['arm']} {m['autoencoder']} {m['unit']}: {m['run']}" for m in missing]),
        )
    if "command" in report:
        page.add(Paragraph(f"`{report['command']}` on {report['device']}, {report['created']}."))
    page.add(Heading("Protocol"))
    if "protocol" in study:
        page.add(
            Table(["setting", "the paper's protocol"], [[_words(k), str(v)] for k, v in study["protocol"].items()])
        )
    page.add(
        Paragraph("Settings that differ from the paper's:"),
        Bullets(study["differs_from_paper"] or ["none"]),
        Paragraph("The arms:"),
        Bullets([f"{arm.name}: {arm.description}" for arm in table.ARMS if arm.name in study["arms"]]),
        Heading("Results"),
        Paragraph(
            "Test metrics, mean ± standard deviation over units; gaps paired by unit, with the paired t and "
            "Wilcoxon tests (n beside every p: with a handful of units they have little power)."
        ),
        Figure("gap.png", "Test balanced accuracy of every arm: bars mean and sd over units, dots single runs."),
        Figure("gap-noise.png", "Test balanced accuracy of the noise-conditioned arms against the noise level."),
    )
    if cost_points(report):
        page.add(
            Figure(
                "gap-cost.png",
                "What each arm recovers of the learnability gap (95 % interval over units) against its measured "
                "training cost per sample relative to the recon arm (right of the dotted line: dearer than decoding).",
            )
        )
    for label, ae in report["autoencoders"].items():
        page.add(*autoencoder_blocks(label, ae), *cost_blocks(ae), *run_blocks(ae))
    if report["skipped"]:
        page.add(
            Paragraph("Skipped:"),
            Bullets([f"{s['arm']} {s['autoencoder']} {s['unit']}: {s['why']}" for s in report["skipped"]]),
        )
    return page


def plot_arms(report: dict, path: Path) -> None:
    """Balanced accuracy of every arm per autoencoder, mean and spread over units, every run as a dot."""
    labels = list(report["autoencoders"])
    arms = [a for a in table.names() if any(a in ae["arms"] for ae in report["autoencoders"].values())]
    with png_axes(path, (1.8 + 2.2 * len(labels), 3.6)) as ax:
        width = 0.8 / max(len(arms), 1)  # a study without a finished run yet draws an empty axis
        for j, arm in enumerate(arms):
            xs = [
                i + (j - (len(arms) - 1) / 2) * width
                for i, label in enumerate(labels)
                if arm in report["autoencoders"][label]["arms"]
            ]
            stats = [
                report["autoencoders"][lb]["arms"][arm]["balanced_accuracy"]
                for lb in labels
                if arm in report["autoencoders"][lb]["arms"]
            ]
            if not xs:
                continue
            ax.bar(xs, [s["mean"] for s in stats], width, yerr=[s["sd"] for s in stats], label=arm, capsize=2)
            for x, s in zip(xs, stats):
                ax.plot([x] * len(s["values"]), s["values"], "k.", ms=3)
        chance = next(iter(report["autoencoders"].values()))["chance"]["balanced_accuracy"]
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel("test balanced accuracy")
        ax.set_title("image vs reconstruction vs latent classifiers")
        ax.legend(fontsize=7, ncol=len(arms) + 1, loc="lower center", bbox_to_anchor=(0.5, 1.08))


def plot_noise(report: dict, path: Path) -> None:
    """The noise-conditioned arms' test balanced accuracy against sigma, per autoencoder (mean over units): every
    arm whose runs recorded a curve."""
    with png_axes(path, (5.5, 3.4)) as ax:
        for label, ae in report["autoencoders"].items():
            for arm in table.names():
                curve = ae["arms"].get(arm, {}).get("test_by_sigma")
                if curve:
                    sig = sorted(curve, key=float)
                    ax.plot([float(s) for s in sig], [curve[s] for s in sig], marker=".", label=f"{label} {arm}")
        chance = next(iter(report["autoencoders"].values()))["chance"]["balanced_accuracy"]
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.set_ylabel("test balanced accuracy")
        ax.legend(fontsize=7)


def cost_points(report: dict) -> list[tuple[str, str, float, float, list[float] | None]]:
    """(autoencoder, arm, cost per sample relative to recon, recovered fraction, its interval) of every arm
    that recovers something and whose speed and the recon arm's were measured."""
    points = []
    for label, ae in report["autoencoders"].items():
        arms, g = ae["arms"], ae["gaps"].get("balanced_accuracy", {})
        if "samples_per_s" not in arms.get(table.RECON, {}):
            continue
        for arm in table.ARMS:
            r = arm.recovers
            if r and "samples_per_s" in arms.get(arm.name, {}) and g.get("recovered", {}).get(r.key) is not None:
                cost = arms[table.RECON]["samples_per_s"]["mean"] / arms[arm.name]["samples_per_s"]["mean"]
                points.append(
                    (label, arm.name, cost, g["recovered"][r.key], g.get("recovered_interval", {}).get(r.key))
                )
    return points


def plot_cost(points: list, path: Path) -> None:
    """Recovered fraction of the learnability gap against training cost per sample relative to the recon arm."""
    with png_axes(path, (5.5, 3.6)) as ax:
        for label, arm, cost, fraction, bounds in points:
            err = None if bounds is None else [[100 * (fraction - bounds[0])], [100 * (bounds[1] - fraction)]]
            ax.errorbar([cost], [100 * fraction], yerr=err, fmt="o", capsize=3, label=f"{label} {arm}")
        ax.axhline(0, color="grey", lw=1)
        ax.axhline(100, color="grey", ls="--", lw=1)
        ax.axvline(1, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("training cost per sample, relative to the recon arm")
        ax.set_ylabel("% of the learnability gap recovered")
        ax.legend(fontsize=7)


def write_report(report: dict, out: Path) -> None:
    """gap.md beside its PNGs, and gap.html: the same page standing alone, its plots inline."""
    plot_arms(report, out / "gap.png")
    plot_noise(report, out / "gap-noise.png")
    if points := cost_points(report):
        plot_cost(points, out / "gap-cost.png")
    page = report_page(report)
    (out / "gap.md").write_text(page.markdown())
    (out / "gap.html").write_text(page.html(out))

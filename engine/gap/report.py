"""The gap report for a person: gap.md (tables) and PNG plots, rendered from gap.json's content only, its rows
and their order from the arm table."""

from __future__ import annotations

from pathlib import Path

from engine.gap import arms as table

NAMES = {
    "balanced_accuracy": "balanced accuracy",
    "auroc": "AUROC",
    "mcc": "MCC",
    "medmnist_acc": "MedMNIST ACC",
    "medmnist_auc": "MedMNIST AUC",
}


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


def _gap_line(name: str, g: dict | None, intervals: bool) -> str:
    """One gap's row; ``intervals`` adds the bootstrap interval column (gap.json written since it has them)."""
    last = " - |" if intervals else ""
    if g is None:
        return f"| {name} | - | - | - | - |{last}"
    if intervals:
        last = f" {_interval(g.get('interval'))} |"
    return f"| {name} | {g['mean']:+.3f} ± {g['sd']:.3f} | {g['n']} | {_p(g['t_p'])} | {_p(g['wilcoxon_p'])} |{last}"


def _recovered(what: str, value: float | None, bounds: list[float] | None) -> str:
    shown = "-" if value is None else f"{100 * value:.0f} %"
    interval = "" if bounds is None else f" (95 % interval {_interval(bounds, '.0f', 100, ' %')})"
    return f"{_words(what)} recovers {shown}{interval}"


def autoencoder_lines(label: str, ae: dict) -> list[str]:
    """One autoencoder's tables: arms, gaps with their tests, recovered fractions, diagnostics."""
    arms = [a for a in table.names() if a in ae["arms"]]
    metrics = [k for k in NAMES if arms and k in ae["arms"][arms[0]]]
    shape = "x".join(map(str, ae["latent_shape"]))
    lines = [
        f"### {label}: {ae['autoencoder']['family']} (pretrained: {str(ae['autoencoder']['pretrained']).lower()}), "
        f"latents {shape} of {ae['image_size']} px images",
        "",
        "| arm | runs | " + " | ".join(NAMES[k] for k in metrics) + " |",
        "|---|---:|" + "---:|" * len(metrics),
    ]
    for arm in arms:
        a = ae["arms"][arm]
        lines.append(f"| {arm} | {len(a['runs'])} | " + " | ".join(_pm(a[k]) for k in metrics) + " |")
    g = ae["gaps"].get("balanced_accuracy", {})
    intervals = "bootstrap" in g  # a gap.json written before the intervals renders as it did
    lines += [
        "",
        "| balanced accuracy | mean ± sd of paired differences | n | paired t p | Wilcoxon p |"
        + (" 95 % interval (bootstrap over units) |" if intervals else ""),
        "|---|---:|---:|---:|---:|" + ("---:|" if intervals else ""),
        *[_gap_line(arm.gap_title, g.get(arm.gap.key), intervals) for arm in table.ARMS if arm.gap],
    ]
    rec = g.get("recovered", {})
    if rec:
        notes = [arm.recovers for arm in table.ARMS if arm.recovers and arm.recovers.key in rec]
        lines += [
            "",
            "Of the learnability gap (means): "
            + "; ".join(_recovered(what, v, g.get("recovered_interval", {}).get(what)) for what, v in rec.items())
            + f" ({'; '.join(f'{_words(r.key)}: {r.note}' for r in notes)}).",
        ]
    d = ae["diagnostics"]
    probe, pca, fid = d["linear_probe"], d["pca"], d.get("fidelity")
    lines += [""]
    if fid:
        lines.append(
            f"- reconstruction fidelity: PSNR {fid['psnr_db']:.2f} dB (lowest {fid['psnr_db_min']:.2f}), "
            f"SSIM {fid['ssim']:.3f} ({fid['rows']} of {fid['split']})"
        )
    if probe:
        lines.append(
            f"- linear probe on pooled latents (train -> test): balanced accuracy "
            f"{probe['balanced_accuracy']:.3f}, AUROC {probe['auroc']:.3f}"
        )
    lines.append(
        f"- PCA participation ratio: {pca['participation_ratio']:.1f} of {pca['dims']} dimensions "
        f"({100 * pca['fraction_of_dims']:.1f} %)"
    )
    lines.append("- channel std (before standardisation): " + ", ".join(f"{s:.3g}" for s in d["channel_std"]))
    return lines


def markdown(report: dict) -> str:
    study = report["study"]
    lines = [
        "# Learnability gap",
        "",
        f"Arms {', '.join(study['arms'])}; units {', '.join(study['units'])}; "
        f"image model {study['image_model']}, latent model {study['latent_model']}; on {study['device']}.",
        "",
        "Settings that differ from the paper's:",
        "",
        *[f"- {d}" for d in study["differs_from_paper"]],
        "",
    ]
    for label, ae in report["autoencoders"].items():
        lines += [*autoencoder_lines(label, ae), ""]
    if report["skipped"]:
        lines += [
            "Skipped:",
            "",
            *[f"- {s['arm']} {s['autoencoder']} {s['unit']}: {s['why']}" for s in report["skipped"]],
        ]
    return "\n".join(lines).rstrip() + "\n"


def plot_arms(report: dict, path: Path) -> None:
    """Balanced accuracy of every arm per autoencoder, mean and spread over units, every run as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, arms = list(report["autoencoders"]), table.names()
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(labels), 3.6))
    width = 0.8 / len(arms)
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_noise(report: dict, path: Path) -> None:
    """The noise-conditioned arms' test balanced accuracy against sigma, per autoencoder (mean over units): every
    arm whose runs recorded a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out: Path) -> None:
    (out / "gap.md").write_text(markdown(report))
    plot_arms(report, out / "gap.png")
    plot_noise(report, out / "gap-noise.png")

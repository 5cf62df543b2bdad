"""The generated sections of the documentation: rendered from real (tiny) result files, written between the markers
only, checked against the files, and the committed pages (docs/results.md, README.md's headline) checked against the
committed results."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.cli import main as bench_main
from bench.readme_section import SchemaError, begin, end, render, render_headline, update
from tests.tiny_bench import NO_SLOW_PARTS, SMALL_PREDICTION, TINY_THROUGHPUT

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = begin("results"), end("results")
GAP_RESULT = REPO / "bench" / "results" / "gap-default-amd-epyc.json"
STUDY_RESULT = REPO / "bench" / "results" / "gap-beyond-intel-xeon.json"  # arms beyond the paper, with speeds
THROUGHPUT = TINY_THROUGHPUT + NO_SLOW_PARTS + SMALL_PREDICTION
KERNELS = ["--batch", "1", "--reps", "1", "--kernels", "film"]
LOADERS = [
    "--samples",
    "200",
    "--shape",
    "4x8x8",
    "--batch",
    "32",
    "--epochs",
    "1",
    "--workers",
    "0",
    "--window",
    "2",
    "--loaders",
    "resident",
]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One result file of each command, written by the command itself at the smallest sizes."""
    root = tmp_path_factory.mktemp("made")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared machine: more threads only wait on each other
    try:
        paths = {kind: root / f"{kind}.json" for kind in ("throughput", "kernels", "loaders")}
        assert bench_main(["throughput", *THROUGHPUT, "--out", str(paths["throughput"])]) == 0
        assert bench_main(["kernels", *KERNELS, "--out", str(paths["kernels"])]) == 0
        assert bench_main(["loaders", *LOADERS, "--workdir", str(root / "stores"), "--out", str(paths["loaders"])]) == 0
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture
def repo(made, tmp_path):
    """A README with the markers and copies of the results under bench/results/, to change freely."""
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    paths = [shutil.copy(made[kind], results / f"{kind}-cpu.json") for kind in ("loaders", "kernels", "throughput")]
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nabove\n{BEGIN}\nstale text\n{END}\nbelow\n")
    return readme, [Path(p) for p in paths]


def _edit(path: Path, change) -> None:
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))


def test_render_takes_every_figure_and_command_from_the_files(repo):
    readme, paths = repo
    loaders, kernels, throughput = (json.loads(p.read_text()) for p in paths)
    text = render(paths, readme.parent)
    for name, report in zip(paths, (loaders, kernels, throughput)):
        assert f"`bench/results/{name.name}`" in text and f"`{report['command']}`" in text
        assert f"torch {report['versions']['torch']}" in text and report["device"] in text
    # throughput first, whatever the order given; reduced sizes said before any figure of the block
    assert text.index("throughput-cpu.json") < text.index("kernels-cpu.json") < text.index("loaders-cpu.json")
    assert throughput["reduced"] and text.index("Reduced sizes") < text.index("| case |")
    ratio, paper = throughput["ratios"][0], throughput["paper"]
    assert ratio["pairing"] == "same source"  # sd-32 against 32 px: the only pairing this run forms
    assert (
        f"| same source | {ratio['latent']} vs {ratio['image']}, batch 2 | {ratio['throughput_ratio']:.2f}x | "
        f"{ratio['memory_ratio']:.2f}x | {paper['throughput_ratio']:.0f}x / {paper['memory_ratio']:.0f}x |"
    ) in text
    for row in throughput["rows"]:
        assert f"| {row['case']} | {row['batch']} | {row['samples_per_s']:,.1f} (" in text
    memory = throughput["memory_at_batch"]
    assert f"Peak memory at batch {memory['batch']}" in text
    for r in memory["ratios"]:
        assert f"| {r['pairing']} | {r['latent']} | {r['image']} | {r['memory_ratio']:.2f}x |" in text
    assert text.index("**Predicted, not measured**") > text.index("| case | batch |")  # after every measured row
    for r in throughput["predicted"]["ratios"]:
        calibrated = f"| {r['device']} | {r['pairing']} | {r['latent']} | {r['image']} | {r['throughput_ratio']:.2f}x"
        assert f"{calibrated} (roofline {r['roofline_throughput_ratio']:.2f}x) | {r['memory_ratio']:.2f}x |" in text
    assert kernels["reference_only"] and kernels["note"] in text and "| median ms |" not in text
    for row in loaders["results"]:
        assert f"| {row['loader']} | {row['format']} | {row['samples_per_s']:,} | {row['GB_per_s']:.3f} |" in text

    # a changed file changes the section
    _edit(paths[2], lambda r: r["rows"][0].update(samples_per_s=12345.678, iqr=[12000.0, 13000.0]))
    _edit(paths[0], lambda r: r["results"][0].update(samples_per_s=4242424))
    _edit(paths[1], lambda r: r.update(reference_only=False))  # as a GPU run: the full table
    text = render(paths, readme.parent)
    assert "12,345.7 (12,000.0-13,000.0)" in text and "| 4,242,424 |" in text
    first = kernels["results"][0]
    assert f"| {first['impl']} | {first['median_ms']:.4f} | {first['gb_per_s']:.1f} | " in text


def test_update_replaces_only_between_the_markers_and_is_idempotent(repo):
    readme, paths = repo
    assert update(readme, paths, readme.parent) is True
    text = readme.read_text()
    head, rest = text.split(BEGIN + "\n")
    section, tail = rest.split(END + "\n")
    assert head == "# title\n\nabove\n" and tail == "below\n"
    assert "stale text" not in section and section.strip() == render(paths, readme.parent).strip()
    assert update(readme, paths, readme.parent) is False and readme.read_text() == text


def test_check_fails_once_a_result_changes_and_leaves_the_readme_alone(repo, capsys):
    readme, paths = repo
    argv = ["report", "--page", str(readme), *map(str, paths)]
    assert bench_main(argv + ["--check"]) == 1  # the stale text
    assert bench_main(argv) == 0 and bench_main(argv + ["--check"]) == 0
    written = readme.read_text()
    _edit(paths[2], lambda r: r["ratios"][0].update(throughput_ratio=77.0))
    capsys.readouterr()
    assert bench_main(argv + ["--check"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(readme) in err and "--check" in err
    assert readme.read_text() == written
    assert bench_main(argv) == 0 and "77.00x" in readme.read_text()


@pytest.mark.parametrize("body, missing", [(f"text\n{END}\n", BEGIN), (f"{BEGIN}\ntext\n", END), ("text\n", BEGIN)])
def test_a_readme_without_the_markers_names_the_one_to_add(repo, body, missing, capsys):
    readme, paths = repo
    readme.write_text(body)
    with pytest.raises(ValueError, match="needs the line") as err:
        update(readme, paths)
    assert missing in str(err.value) and str(readme) in str(err.value) and len(str(err.value).splitlines()) == 1
    assert bench_main(["report", "--page", str(readme), *map(str, paths)]) == 2
    assert missing in capsys.readouterr().err and readme.read_text() == body


def test_an_unknown_file_is_refused_by_name(repo, made, capsys):
    readme, paths = repo
    other = readme.parent / "other.json"
    other.write_text(json.dumps({"schema": 7, "results": [{"name": "x"}]}))
    with pytest.raises(SchemaError, match="other.json"):
        render([*paths, other])
    before = readme.read_text()
    assert bench_main(["report", "--page", str(readme), *map(str, paths), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other.json" in err and readme.read_text() == before
    # plain `bench report` keeps taking throughput results only
    assert bench_main(["report", str(made["throughput"]), str(made["kernels"])]) == 2
    assert "kernels.json" in capsys.readouterr().err


def test_the_fidelity_block_takes_its_figures_from_bench_fidelity(tmp_path):
    out = tmp_path / "bench" / "results" / "fidelity-cpu.json"
    assert bench_main(["fidelity", "--images", "8", "--batch-size", "8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["autoencoder"] for r in report["rows"]] == ["default", "default-untrained"]
    text = render([out], tmp_path)
    assert f"`bench/results/fidelity-cpu.json`, written by `{report['command']}`" in text
    for r in report["rows"]:
        assert f"| {r['autoencoder']} | {str(r['pretrained']).lower()} | " in text
        assert f"{r['psnr_db']:.2f} ({r['psnr_db_min']:.2f}) | {r['ssim']:.4f} |" in text
    assert report["shipped_training"]["command"] in text
    good, lost = report["rows"]
    assert good["psnr_db"] > 30 > 15 > lost["psnr_db"]


def test_the_headline_takes_every_figure_from_the_gap_result(tmp_path):
    gap = Path(shutil.copy(GAP_RESULT, tmp_path / "gap.json"))
    report = json.loads(gap.read_text())
    text = render_headline([gap], tmp_path)
    assert f"`gap.json`, written by `{report['command']}`" in text and report["device"] in text
    assert text.count("\n| ") == 1 + len(report["autoencoders"])  # the header row, then one row per autoencoder
    for label, ae in report["autoencoders"].items():
        arms = ae["arms"]
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        for arm in report["study"]["arms"]:
            accuracy = arms[arm]["balanced_accuracy"]
            assert f"| {accuracy['mean']:.3f} ± {accuracy['sd']:.3f} |" in row
        gap_ = ae["gaps"]["balanced_accuracy"]["learnability_gap"]
        assert row.endswith(f"| {gap_['mean']:+.3f} ± {gap_['sd']:.3f} |")
    # a changed figure changes the table
    _edit(gap, lambda r: r["autoencoders"]["default"]["gaps"]["balanced_accuracy"]["learnability_gap"].update(mean=0.5))
    assert "| +0.500 ± " in render_headline([gap], tmp_path)


def test_the_headline_adds_what_each_arm_costs_and_recovers_where_the_study_measured_it(tmp_path):
    report = json.loads(STUDY_RESULT.read_text())
    text = render_headline([STUDY_RESULT], REPO)
    ae = report["autoencoders"]["default"]
    speed = {arm: a["samples_per_s"]["mean"] for arm, a in ae["arms"].items()}
    g = ae["gaps"]["balanced_accuracy"]
    for arm in speed:
        row = next(line for line in text.splitlines() if line.startswith(f"| {arm} | {speed[arm]:,.0f} |"))
        assert f"| {speed['recon'] / speed[arm]:.2f} |" in row  # cost per sample relative to the recon arm
    graft = next(line for line in text.splitlines() if line.startswith("| latent-graft |"))
    lo, hi = g["recovered_interval"]["graft"]
    assert f"| {100 * g['recovered']['graft']:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}] |" in graft
    assert f"{g['gain']['graft']['mean']:+.3f} (t p " in graft
    assert "What each arm costs and recovers, default:" not in render_headline([GAP_RESULT], REPO)  # no speeds


def test_a_page_holds_several_sections_each_rendered_in_place(repo, tmp_path, capsys):
    readme, paths = repo
    gap = Path(shutil.copy(GAP_RESULT, readme.parent / "bench" / "results" / "gap-cpu.json"))
    page = tmp_path / "page.md"
    page.write_text(f"top\n{begin('headline')}\nSTALE\n{end('headline')}\nmiddle\n{BEGIN}\nSTALE\n{END}\nbottom\n")
    assert update(page, [*paths, gap], tmp_path) is True
    text = page.read_text()
    headline_part = text.split(begin("headline"))[1].split(end("headline"))[0]
    results_part = text.split(BEGIN)[1].split(END)[0]
    assert headline_part.strip() == render_headline([*paths, gap], tmp_path).strip()
    assert results_part.strip() == render([*paths, gap], tmp_path).strip()
    assert text.startswith("top\n") and "\nmiddle\n" in text and text.endswith("bottom\n") and "STALE" not in text
    # a headline asked for without a gap result is refused, naming what to pass
    with pytest.raises(ValueError, match="engine gap"):
        update(page, paths, tmp_path)
    # two pages in one command, checked together
    argv = ["report", "--page", str(page), "--page", str(readme), *map(str, [*paths, gap])]
    assert bench_main(argv + ["--check"]) == 1 and "--check" in capsys.readouterr().err
    assert bench_main(argv) == 0 and bench_main(argv + ["--check"]) == 0


@pytest.mark.parametrize("page", ["docs/results.md", "README.md"])
def test_committed_pages_match_committed_results(page):
    results = sorted((REPO / "bench" / "results").glob("*.json"))
    assert results, "no bench/results/*.json committed: run bench throughput, kernels and loaders and commit their JSON"
    assert not update(REPO / page, results, REPO, write=False), (
        f"{page}'s generated sections are not what bench/results/*.json render: run "
        "`bench report --page README.md --page docs/results.md bench/results/*.json` and commit both pages"
    )


def test_the_readme_holds_the_headline_and_the_results_page_every_block():
    readme, results = (REPO / "README.md").read_text(), (REPO / "docs" / "results.md").read_text()
    assert begin("headline") in readme and BEGIN not in readme
    assert BEGIN in results and "### The learnability gap" in results and "### Training steps" in results
    assert len(readme) < 12_000, f"README.md is {len(readme)} characters; move detail to docs/"

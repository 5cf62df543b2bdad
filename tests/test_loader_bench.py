"""`bench loaders` runs every loader on both formats of one store and reports rates and shuffle quality."""

import json

from bench.cli import main
from engine.loaders.choose import dali_available


def test_bench_loaders_reports_every_loader_and_format(tmp_path, capsys):
    out = tmp_path / "loaders.json"
    assert (
        main(
            [
                "loaders",
                "--samples",
                "700",
                "--shape",
                "4x32x32",
                "--batch",
                "64",
                "--epochs",
                "2",
                "--workers",
                "0",
                "--window",
                "2",
                "--workdir",
                str(tmp_path / "stores"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    done = {(r["loader"], r["format"]) for r in report["results"]}
    loaders = ("resident", "dali", "torch") if dali_available() else ("resident", "torch")
    assert done == {(loader, fmt) for loader in loaders for fmt in ("zarr", "wds")}
    assert all(r["samples_per_s"] > 0 and r["GB_per_s"] > 0 and r["samples"] == 700 for r in report["results"])
    assert report["command"].startswith("bench loaders --samples 700") and report["versions"]["torch"]
    quality = report["shuffle_quality"]
    assert quality["global (resident)"]["ratio"] > 0.9 > quality["block of 2 chunks (dali, torch)"]["ratio"]
    table = capsys.readouterr().out
    assert "samples/s" in table and "shuffle quality" in table and "torch" in table
    assert report["complete"] is True


def test_a_cut_loader_run_keeps_the_loaders_timed_so_far(tmp_path, monkeypatch):
    """SIGINT (KeyboardInterrupt) during the second loader: exit 130, the first loader's row saved, incomplete."""
    import bench.loaders as loaders

    real, seen = loaders.time_loader, []

    def time_then_interrupt(store, name, *args):
        seen.append(name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(store, name, *args)

    monkeypatch.setattr(loaders, "time_loader", time_then_interrupt)
    out = tmp_path / "cut.json"
    argv = ["loaders", "--samples", "300", "--batch", "64", "--epochs", "2", "--workers", "0"]
    argv += ["--loaders", "resident,torch", "--formats", "zarr", "--workdir", str(tmp_path), "--out", str(out)]
    assert main(argv) == 130
    report = json.loads(out.read_text())
    assert report["complete"] is False and [r["loader"] for r in report["results"]] == ["resident"]

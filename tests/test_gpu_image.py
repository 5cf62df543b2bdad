"""The lent GPU machine's image has torch and triton but no diffusers, zarr, webdataset or DALI: `bench`,
`engine` and `kernels` must import there, and `bench throughput` and `bench kernels` must run."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.tiny_bench import TINY_THROUGHPUT

ABSENT = ("diffusers", "zarr", "webdataset", "nvidia.dali")
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in {ABSENT!r}):
                raise ModuleNotFoundError(f"No module named {{name!r}} (as on the GPU image)", name=name)
            return None

    sys.meta_path.insert(0, Absent())
""")


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)


def test_the_packages_import_and_the_benches_run_without_diffusers_zarr_webdataset_and_dali(tmp_path):
    probe = _run(
        tmp_path,
        "-c",
        "import importlib.util, bench.cli, bench.throughput, bench.kernels, engine.cli, "
        "engine.train, kernels; import zarr",
    )
    assert "No module named 'zarr' (as on the GPU image)" in probe.stderr, probe.stderr[-2000:]  # the blocker works
    ok = _run(
        tmp_path,
        "-c",
        "import bench.cli, bench.throughput, bench.kernels, bench.loaders, engine.cli, "
        "engine.train, engine.gap, kernels",
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    out = tmp_path / "throughput.json"
    # real input needs diffusers and zarr, the encode cost diffusers: each reports why it skipped, the run goes on
    tiny = ["--real-size", "32", "--real-samples", "8", "--encode-family", "default-untrained", "--encode-size", "32"]
    argv = [*TINY_THROUGHPUT, "--max-batch", "0", "--no-profile", "--memory-batch", "0", "--no-predict", *tiny]
    run = _run(tmp_path, "-m", "bench.cli", "throughput", *argv, "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["complete"] and len(report["rows"]) == 2
    for part in ("real_input", "encode"):
        assert "No module named" in report[part]["skipped"] and "(as on the GPU image)" in report[part]["skipped"]
    kernels = tmp_path / "kernels.json"
    run = _run(
        tmp_path,
        "-m",
        "bench.cli",
        "kernels",
        "--batch",
        "1",
        "--reps",
        "1",
        "--kernels",
        "film",
        "--out",
        str(kernels),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(kernels.read_text())["results"]

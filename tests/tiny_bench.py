"""The smallest `bench throughput` command line that still measures both sides, shared by the tests that run it."""

TINY_THROUGHPUT = [
    "--device",
    "cpu",
    "--latent-models",
    "adm-s-film",
    "--image-models",
    "resnet18",
    "--shapes",
    "sd-32",
    "--image-sizes",
    "32",
    "--batch",
    "2",
    "--warmup",
    "1",
    "--windows",
    "5",
    "--steps",
    "1",
    "--threads",
    "1",
]
# the parts after the equal-batch table that need a real store, an encoder or minutes, off
NO_SLOW_PARTS = ["--max-batch", "0", "--no-profile", "--no-real-input", "--no-encode"]
# every part off: the equal-batch table alone
TABLE_ONLY = [*NO_SLOW_PARTS, "--memory-batch", "0", "--no-predict"]
# the memory and predicted parts at their smallest
SMALL_PREDICTION = ["--memory-batch", "4", "--predict-devices", "h100-sxm", "--predict-shapes", "sd-64"]
SMALL_PREDICTION += ["--predict-image-sizes", "32,64", "--no-end-to-end"]  # the paper's sizes only: minutes

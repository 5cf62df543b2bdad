"""Which image classifier `bench throughput` sets each latent classifier against, and the ratios of a pair.

Three pairings. The paper protocol: the latent of a 512 px image against the image classifier at 256 px (the
paper encodes 512 px images and trains its image classifier at 256 px), that is at half the latent's source
px. The same source: against the image classifier at the latent's own source px. End to end
(``bench.end_to_end``): the paper protocol with each side fed as users train it, the image side decoding
512 px PNG/JPEG files in DataLoader workers, the latent side reading its store through the engine's loader;
a side runs at min(loader, step). The paper reports 64x the throughput and 1/120 of the memory.
"""

from __future__ import annotations

from collections.abc import Iterator

PAPER = {"throughput_ratio": 64.0, "memory_ratio": 120.0}
PAIRINGS = {"paper protocol": 0.5, "same source": 1.0}  # image side of the pair: this fraction of the source px
END_TO_END = "end to end"  # the paper protocol's sizes, input pipelines included: its rows need loader rates


def pairs(rows: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(pairing, latent row, image row) for every latent row and each image row one of its pairings names."""
    images = [r for r in rows if r["space"] == "image"]
    for lat in (r for r in rows if r["space"] == "latent"):
        for pairing, fraction in PAIRINGS.items():
            wanted = int(lat["source_px"] * fraction) if lat["source_px"] else None
            for img in (r for r in images if r["source_px"] == wanted):
                yield pairing, lat, img


def ratios(rows: list[dict], regime: str) -> list[dict]:
    """latent/image throughput and image/latent memory of every pair of rows of ``regime``; memory only at
    equal batch, where both sides ran the same batch."""
    return [
        {
            "regime": regime,
            "pairing": pairing,
            "latent": lat["case"],
            "image": img["case"],
            "latent_batch": lat["batch"],
            "image_batch": img["batch"],
            "throughput_ratio": lat["samples_per_s"] / img["samples_per_s"],
            "memory_ratio": img["peak_memory_bytes"] / lat["peak_memory_bytes"]
            if regime == "equal batch" and lat["peak_memory_bytes"] > 0
            else None,
        }
        for pairing, lat, img in pairs([r for r in rows if r["regime"] == regime])
    ]


def memory_ratios(rows: list[dict]) -> list[dict]:
    """image/latent peak memory of every pair of rows measured at one batch (``case_rows.memory_at``)."""
    return [
        {
            "pairing": pairing,
            "latent": lat["case"],
            "image": img["case"],
            "batch": lat["batch"],
            "memory_ratio": img["peak_memory_bytes"] / lat["peak_memory_bytes"],
        }
        for pairing, lat, img in pairs(rows)
        if lat["peak_memory_bytes"] > 0
    ]

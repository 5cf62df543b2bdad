"""Arrays derived from a store's rows after encoding (reconstructions, augmented views), added block by block.

Each block is written with its checksum and then its flag (the container's ``write_derived_block``), so a killed
addition, run again, redoes only the blocks without a flag; once every block is in, the field's files enter the
store's integrity record and the manifest's record of the field says it is complete.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from engine.store.integrity import update_field_files


class Block(NamedTuple):
    """Rows [lo, hi) of split ``split``, its block number ``index``."""

    split: str
    index: int
    lo: int
    hi: int


def unfinished_blocks(store, field: str) -> list[Block]:
    """The blocks of every split whose ``field`` is not written yet, in split and block order."""
    out = []
    for name in store.splits:
        split = store.split(name)
        for b in np.flatnonzero(split.derived_done(field) == 0):
            out.append(Block(name, int(b), int(b) * split.block, min((int(b) + 1) * split.block, split.size)))
    return out


def write_blocks(store, field: str, blocks: list[Block], make: Callable[[Block], np.ndarray], desc: str) -> None:
    """``make(block)`` for each block, written as it comes, with a progress bar in rows."""
    with tqdm(total=sum(b.hi - b.lo for b in blocks), unit="img", desc=desc, file=sys.stderr) as bar:
        for block in blocks:
            store.split(block.split).write_derived_block(field, block.index, make(block))
            bar.update(block.hi - block.lo)


def finish(store, field: str, record: dict) -> dict:
    """Enter the field's files into the integrity record, then mark its manifest record complete."""
    for name in store.splits:
        for name_of_field, files in store.split(name).data_files().items():
            if name_of_field.startswith(field):
                update_field_files(store.path, name, name_of_field, files)
    record["complete"] = True
    store.set_manifest({**store.manifest, field: record})
    return record

"""The same seed gives the same weights as the code recorded in tests/fixtures/same_weights.json did.

The fixture pins every loss and the final weights of short runs through each path of the step; it was
recorded from the code before issue 22's restructuring (commit 92a495c), with the CPU instruction set pinned
(see tests/same_weights.py), so a refactor that changes any of them fails here.
"""

import json

import pytest

from tests.pinned_isa import ON_ANOTHER_VENDOR, WHY_NOT_HERE
from tests.same_weights import FIXTURE, assert_same, record_pinned


@pytest.mark.skipif(ON_ANOTHER_VENDOR, reason=WHY_NOT_HERE)
def test_training_gives_the_recorded_losses_and_weights(tmp_path):
    assert_same(record_pinned(tmp_path), json.loads(FIXTURE.read_text()))

"""The same seed gives the same weights as the code recorded in tests/fixtures/same_weights.json did.

The fixture was written before the training code was restructured (issue 12) and pins every loss and the
final weights of short runs through each path of the step; see tests/same_weights.py.
"""

import json

from tests.same_weights import FIXTURE, assert_same, record


def test_training_gives_the_recorded_losses_and_weights(tmp_path):
    assert_same(record(tmp_path), json.loads(FIXTURE.read_text()))

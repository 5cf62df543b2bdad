"""Losses: LDAM-DRW against hand-computed numbers, CB weights, DRW schedule, distillation, validity masks."""

import math

import pytest
import torch
import torch.nn.functional as F

from engine.losses import (
    LOSSES,
    RECIPES,
    BinaryCrossEntropy,
    CrossEntropy,
    Distillation,
    LDAMLoss,
    build_loss,
    class_balanced_weights,
    ldam_margins,
    logit_mse,
    recipe,
    sigmoid_kl,
    softmax_kl,
)

COUNTS = [100, 10, 1]


def test_class_balanced_weights_match_the_formula_by_hand_and_sum_to_k():
    # effective numbers 1 - 0.9999^n: 0.00995066, 0.00099955, 0.0001; w = (1 - beta) / that, then * K / sum
    raw = [1e-4 / (1 - 0.9999**100), 1e-4 / (1 - 0.9999**10), 1e-4 / (1 - 0.9999**1)]
    assert raw == pytest.approx([0.0100496, 0.1000450, 1.0], rel=1e-5)
    expected = [3 * w / sum(raw) for w in raw]
    weights = class_balanced_weights(COUNTS, beta=0.9999)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.tolist() == pytest.approx([0.0271587, 0.2703689, 2.7024724], rel=1e-5)
    assert weights.sum().item() == pytest.approx(3.0, rel=1e-6)
    assert class_balanced_weights([7, 50, 3000, 2], beta=0.999).sum().item() == pytest.approx(4.0, rel=1e-6)
    assert class_balanced_weights([5, 5, 5]).tolist() == pytest.approx([1.0, 1.0, 1.0])  # balanced: uniform


def test_ldam_margins_are_inverse_fourth_root_with_max_half():
    # n^(-1/4) = 0.316228, 0.562341, 1; scaled by 0.5 / 1
    assert ldam_margins(COUNTS).tolist() == pytest.approx([0.5 / 10**0.5, 0.5 / 10**0.25, 0.5], rel=1e-6)
    assert ldam_margins(COUNTS).tolist() == pytest.approx([0.1581139, 0.2811707, 0.5], rel=1e-6)
    assert ldam_margins([16, 1], max_margin=0.3).tolist() == pytest.approx([0.15, 0.3], rel=1e-6)


def ce_by_hand(z: list[float], y: int) -> float:
    return -z[y] + math.log(sum(math.exp(v) for v in z))


def test_ldam_loss_equals_hand_computation_unweighted_and_class_weighted():
    logits = torch.tensor([[1.0, 0.5, -0.5], [0.2, 0.1, 0.4]])
    labels = torch.tensor([2, 0])
    m = [0.5 / 10**0.5, 0.5 / 10**0.25, 0.5]
    # row 0: true class 2 loses 0.5 -> 30 * [1, 0.5, -1]; row 1: true class 0 loses 0.158 -> 30 * [0.0419, 0.1, 0.4]
    l0 = ce_by_hand([30 * 1.0, 30 * 0.5, 30 * (-0.5 - m[2])], 2)
    l1 = ce_by_hand([30 * (0.2 - m[0]), 30 * 0.1, 30 * 0.4], 0)
    assert LDAMLoss(COUNTS)(logits, labels).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    w = class_balanced_weights(COUNTS).tolist()
    weighted = LDAMLoss(COUNTS, weight=torch.tensor(w))(logits, labels).item()
    assert weighted == pytest.approx((w[2] * l0 + w[0] * l1) / (w[2] + w[0]), rel=1e-5)


def test_ldam_without_margins_is_scaled_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 5, generator=g), torch.randint(0, 5, (16,), generator=g)
    weight = torch.rand(5, generator=g) + 0.5
    loss = LDAMLoss([50, 20, 10, 5, 1], max_margin=0.0, scale=30.0)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(30 * logits, labels))
    loss = LDAMLoss([50, 20, 10, 5, 1], max_margin=0.0, scale=7.0, weight=weight)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(7 * logits, labels, weight=weight))
    margined = LDAMLoss([50, 20, 10, 5, 1])(logits, labels)
    assert margined > F.cross_entropy(30 * logits, labels)  # a margin only ever raises the true-class loss


def test_drw_switches_to_class_balanced_weights_and_tenth_lr_at_epoch_10():
    drw = RECIPES["ldam-drw"]
    assert [(drw.weighted(e), drw.lr_factor(e)) for e in (0, 9)] == [(False, 1.0), (False, 1.0)]
    assert [(drw.weighted(e), drw.lr_factor(e)) for e in (10, 11, 59)] == [(True, 0.1)] * 3
    early = recipe("ldam-drw", False, defer_epoch=5)
    assert [(early.weighted(e), early.lr_factor(e)) for e in (4, 5)] == [(False, 1.0), (True, 0.1)]
    assert build_loss("ldam-drw", COUNTS, defer_epoch=5, epoch=5).weight is not None
    assert build_loss("ldam-drw", COUNTS, epoch=9).weight is None
    after = build_loss("ldam-drw", COUNTS, epoch=10)
    torch.testing.assert_close(after.weight, class_balanced_weights(COUNTS))
    torch.testing.assert_close(after.margins, ldam_margins(COUNTS))
    assert build_loss("ce-drw", COUNTS, epoch=12).weight is not None
    assert build_loss("ce-drw", COUNTS, epoch=3).weight is None
    assert build_loss("ldam", COUNTS, epoch=30).weight is None  # plain LDAM never re-weights
    for epoch in (0, 30):  # class-balanced CE weighs from the first epoch and never steps the rate
        torch.testing.assert_close(build_loss("ce-cb", COUNTS, epoch=epoch).weight, class_balanced_weights(COUNTS))
        assert RECIPES["ce-cb"].lr_factor(epoch) == 1.0
    assert [RECIPES["ldam-drw"].lr_factor(e) for e in (9, 10)] == [1.0, 0.1]
    assert [RECIPES[name].lr_factor(30) for name in ("ce", "bce", "ldam")] == [1.0, 1.0, 1.0]


def test_every_drw_recipe_restarts_early_stopping_at_its_reweighting_epoch():
    drw = {name for name, r in RECIPES.items() if r.weighting == "drw"}
    assert drw == {"ce-drw", "ldam-drw"}  # the paper's LDAM-DRW and its CE twin, which used to be missed
    for name in RECIPES:
        bound = recipe(name, name == "bce", defer_epoch=5)
        assert [bound.restarts_patience(e) for e in (4, 5, 6)] == [False, name in drw, False]
        assert bound.lr_factor(5) == (0.1 if name in drw else 1.0) and bound.lr_factor(4) == 1.0


def test_build_loss_rejects_bad_names_task_mismatch_and_empty_classes():
    with pytest.raises(ValueError, match="choose one of ce, ce-cb, ce-drw, bce, ldam, ldam-drw"):
        build_loss("focal", COUNTS)
    with pytest.raises(ValueError, match="multi-label labels .* take 'bce'"):
        build_loss("ldam", COUNTS, multilabel=True)
    with pytest.raises(ValueError, match="single-label"):
        build_loss("bce", None, multilabel=False)
    with pytest.raises(ValueError, match="no training sample"):
        build_loss("ldam", [10, 0, 3])
    with pytest.raises(ValueError, match="class_counts"):
        build_loss("ldam-drw", None, epoch=10)
    assert {type(build_loss(n, COUNTS, n == "bce")) for n in LOSSES} == {CrossEntropy, BinaryCrossEntropy, LDAMLoss}


def test_losses_check_label_shapes():
    with pytest.raises(ValueError, match="int64 labels"):
        CrossEntropy()(torch.randn(4, 3), torch.rand(4, 3))
    with pytest.raises(ValueError, match="same shape"):
        BinaryCrossEntropy()(torch.randn(4, 3), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="built for 3 classes"):
        LDAMLoss(COUNTS)(torch.randn(4, 5), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="bool mask"):
        CrossEntropy()(torch.randn(4, 3), torch.randint(0, 3, (4,)), valid=torch.ones(4))


def test_plain_losses_equal_torch_on_an_all_valid_batch():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(12, 4, generator=g), torch.randint(0, 4, (12,), generator=g)
    weight = torch.rand(4, generator=g) + 0.1
    torch.testing.assert_close(
        CrossEntropy(weight)(logits, labels, torch.ones(12, dtype=torch.bool)),
        F.cross_entropy(logits, labels, weight=weight),
    )
    targets, pos_weight = torch.randint(0, 2, (12, 4), generator=g).to(torch.uint8), torch.tensor([1.0, 3.0, 0.5, 2.0])
    torch.testing.assert_close(
        BinaryCrossEntropy(pos_weight)(logits, targets),
        F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=pos_weight),
    )
    assert CrossEntropy()(logits.bfloat16(), labels).dtype == torch.float32


def test_distillation_interpolates_classification_and_logit_mse():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    cls = LDAMLoss(COUNTS)
    assert torch.equal(Distillation(cls, alpha=1.0)(student, labels, teacher), cls(student, labels))
    assert torch.equal(Distillation(cls, alpha=0.0)(student, labels, teacher), F.mse_loss(student, teacher))
    torch.testing.assert_close(
        Distillation(cls)(student, labels, teacher), 0.5 * cls(student, labels) + 0.5 * F.mse_loss(student, teacher)
    )
    torch.testing.assert_close(logit_mse(student, teacher), F.mse_loss(student, teacher))


def test_kl_is_zero_for_identical_logits_and_matches_hinton_otherwise():
    g = torch.Generator().manual_seed(3)
    student, teacher = 3 * torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    for t in (1.0, 4.0):
        assert softmax_kl(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
        assert sigmoid_kl(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
        hinton = t * t * F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
        torch.testing.assert_close(softmax_kl(student, teacher, t), hinton)
        assert softmax_kl(student, teacher, t) > 0 and sigmoid_kl(student, teacher, t) > 0


def test_multilabel_kl_has_the_gradient_of_bce_against_teacher_probabilities():
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(6, 4, generator=g).requires_grad_(), torch.randn(6, 4, generator=g)
    t = 2.0
    (grad_kl,) = torch.autograd.grad(sigmoid_kl(student, teacher, t), student)
    bce = t * t * F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t))
    (grad_bce,) = torch.autograd.grad(bce, student)
    torch.testing.assert_close(grad_kl, grad_bce)


def test_distillation_rejects_missing_teacher_and_misplaced_temperature():
    with pytest.raises(ValueError, match="engine encode --teacher"):
        Distillation(CrossEntropy())(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), None)
    with pytest.raises(ValueError, match="kind 'kl'"):
        Distillation(CrossEntropy(), kind="mse", temperature=4.0)
    with pytest.raises(ValueError, match="choose one of mse, kl"):
        Distillation(CrossEntropy(), kind="cosine")


def distil(kind: str, multilabel: bool, cls: torch.nn.Module):
    """A distillation loss called like the others, the teacher's logits passed as t."""
    loss = Distillation(cls, 0.5, kind, 2.0 if kind == "kl" else 1.0, multilabel)
    return lambda logits, labels, valid=None, t=None: loss(logits, labels, t, valid)


def all_losses() -> list[tuple[str, object, bool]]:
    w = class_balanced_weights([30, 20, 10, 5])
    return [
        ("ce", CrossEntropy(), False),
        ("ce-weighted", CrossEntropy(w), False),
        ("ldam", LDAMLoss([30, 20, 10, 5]), False),
        ("ldam-drw", build_loss("ldam-drw", [30, 20, 10, 5], epoch=10), False),
        ("bce", BinaryCrossEntropy(torch.tensor([1.0, 2.0, 0.5, 1.0])), True),
        ("distil-mse", distil("mse", False, LDAMLoss([30, 20, 10, 5])), False),
        ("distil-kl", distil("kl", False, CrossEntropy(w)), False),
        ("distil-kl-multilabel", distil("kl", True, BinaryCrossEntropy()), True),
    ]


@pytest.mark.parametrize("name,loss,multilabel", all_losses(), ids=[c[0] for c in all_losses()])
def test_padded_rows_change_nothing_and_gradients_flow_to_valid_rows_only(name, loss, multilabel):
    g = torch.Generator().manual_seed(5)
    n, pad, k = 10, 6, 4
    logits = torch.randn(n + pad, k, generator=g)
    logits[n:] = 1e4 * torch.randn(pad, k, generator=g)  # padding may hold anything
    labels = (
        torch.randint(0, 2, (n + pad, k), generator=g).to(torch.uint8)
        if multilabel
        else torch.randint(0, k, (n + pad,), generator=g)
    )
    teacher = torch.randn(n + pad, k, generator=g)
    valid = torch.arange(n + pad) < n
    perm = torch.randperm(n + pad, generator=g)  # padding interleaved, not only at the tail
    logits, labels, teacher, valid = logits[perm], labels[perm], teacher[perm], valid[perm]
    extra = {"t": teacher} if name.startswith("distil") else {}
    full = logits.clone().requires_grad_()
    masked = loss(full, labels, valid, **extra)
    (grad,) = torch.autograd.grad(masked, full)
    kept = logits[valid].clone().requires_grad_()
    alone = loss(kept, labels[valid], None, **({"t": teacher[valid]} if extra else {}))
    (grad_alone,) = torch.autograd.grad(alone, kept)
    torch.testing.assert_close(masked, alone)
    assert torch.isfinite(grad).all() and grad[valid].abs().sum() > 0
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))
    torch.testing.assert_close(grad[valid], grad_alone)
    step = loss(logits - 0.1 * grad / grad.norm(), labels, valid, **extra)  # a small step downhill lowers the loss
    assert step < masked.detach()


@pytest.mark.parametrize("name,loss,multilabel", all_losses()[:5], ids=[c[0] for c in all_losses()[:5]])
def test_a_batch_of_only_padding_gives_zero_loss_and_zero_gradient(name, loss, multilabel):
    logits = torch.randn(4, 4, requires_grad=True)
    labels = torch.zeros(4, 4, dtype=torch.uint8) if multilabel else torch.zeros(4, dtype=torch.long)
    value = loss(logits, labels, torch.zeros(4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros(4, 4))

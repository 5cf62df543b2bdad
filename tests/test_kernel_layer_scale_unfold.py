"""unfold_layer_scale_: the Triton pass (interpreted on CPU) against its torch ops and fp64, on odd shapes, with the
folded bias gradient in bf16 (as a bf16 step gives it) and fp32; bad shapes are a one-line error."""

import pytest
import torch

from kernels.layer_scale_unfold import unfold_layer_scale_, unfold_layer_scale_reference


def inputs(c, n, db_dtype):
    dw, w = torch.randn(c, n), torch.randn(c, n) / n**0.5
    db, b, scale = torch.randn(c).to(db_dtype), torch.randn(c), 1e-2 * torch.rand(c)
    return dw, db, w, b, scale


@pytest.mark.parametrize("db_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("c,n", [(5, 13), (96, 384), (1, 1), (3, 3072)])
def test_triton_pass_matches_the_torch_ops_and_fp64(c, n, db_dtype, triton_path, poisoned):
    dw, db, w, b, scale = inputs(c, n, db_dtype)
    exact_dscale = (dw.double() * w.double()).sum(1) + db.double() * b.double()
    want = unfold_layer_scale_reference(dw.clone(), db, w, b, scale)
    folded = dw.clone()
    dw2, db2, dscale = unfold_layer_scale_(folded, db, w, b, scale)
    assert dw2.data_ptr() == folded.data_ptr(), "dW2 over the folded gradient"
    assert torch.equal(dw2, want[0]) and torch.equal(db2, want[1])  # one multiply each, as the torch ops
    torch.testing.assert_close(dscale, want[2], rtol=1e-5, atol=1e-5 * n**0.5)  # the row sum in another order
    torch.testing.assert_close(dscale.double(), exact_dscale, rtol=1e-5, atol=1e-5 * n**0.5)


def test_other_dtypes_take_the_torch_ops(triton_path):
    dw, db, w, b, scale = (t.double() for t in inputs(4, 8, torch.float32))
    got = unfold_layer_scale_(dw.clone(), db, w, b, scale)
    want = unfold_layer_scale_reference(dw.clone(), db, w, b, scale)
    assert all(torch.equal(g, x) for g, x in zip(got, want))


def test_shapes_that_do_not_fit_are_a_one_line_error():
    dw, db, w, b, scale = inputs(4, 8, torch.float32)
    with pytest.raises(ValueError, match=r"must be \(4, 8\), \(4,\), \(4,\), \(4,\)"):
        unfold_layer_scale_(dw[:, :7], db, w, b, scale)

"""``torch.autocast("cuda", torch.bfloat16)`` applied to tensors on any device, so a CPU can run a step with
the dtypes a CUDA run has (bench.simulated_step runs fake CPU tensors: see there why not CUDA ones).

The op lists are torch's own, from ``ATen/autocast_mode.h``; tests/test_bench_predict.py checks them against
that header. Casts happen at the Python call, above autograd, so autograd saves the bf16 copies, as with
real autocast, and the weight-cast cache is the same.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

# torch 2.13, ATen/autocast_mode.h: the lists TORCH_LIBRARY_IMPL(aten, Autocast, m) registers for CUDA
# (every overload listed there covers the op; conv_transpose2d/3d.input and conv2d.padding map to the same
# Python call). Python-level names that reach these ops in one call are added (__matmul__, F.softmax, ...).
LOWER_PRECISION_FP = frozenset(
    "_convolution conv1d conv2d conv3d conv_tbc conv_transpose1d conv_transpose2d conv_transpose3d convolution "
    "prelu addmm addmv addr matmul __matmul__ __rmatmul__ einsum mm mv linalg_vecdot linear addbmm baddbmm bmm "
    "chain_matmul linalg_multi_dot _thnn_fused_lstm_cell _thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell "
    "rnn_relu_cell _scaled_dot_product_flash_attention scaled_dot_product_attention".split()
)
FP32 = frozenset(
    "acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow __pow__ __rpow__ "
    "softplus layer_norm native_layer_norm rms_norm group_norm frobenius_norm nuclear_norm "
    "cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div "
    "l1_loss smooth_l1_loss huber_loss mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss "
    "triplet_margin_loss multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp "
    "upsample_nearest1d _upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d "
    "upsample_nearest3d _upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa "
    "upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa "
    # Python composites whose one aten call is in the list (F.interpolate -> upsample_*, F.cross_entropy ->
    # log_softmax + nll_loss, both fp32 on CUDA)
    "interpolate cross_entropy".split()
)
FP32_SET_OPT_DTYPE = frozenset(
    "prod softmax log_softmax cumprod cumsum linalg_vector_norm linalg_matrix_norm sum norm".split()
)
PROMOTE = frozenset(
    "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler grid_sample index_put tensordot scatter_add".split()
)


def _eligible(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


class CudaAutocast(TorchFunctionMode):
    """``torch.autocast("cuda", dtype)`` applied to tensors on any device, at the Python call of each op.

    Casts as ATen's CUDA autocast kernels do: lower-precision ops take every floating input in ``dtype``,
    fp32 ops in float32, softmax/sum-like ops get ``dtype=torch.float32`` unless one is given, promote ops
    run in the widest floating input type; other ops run as called. Casts of fp32 leaf tensors that require
    grad (the weights) are cached until the block ends, as autocast's cache does. ``casts`` holds the
    storages of those copies (weakly), so callers can tell weight copies from activations.
    """

    def __init__(self, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.casts: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def __exit__(self, *exc):
        self._cache.clear()  # as autocast drops its cache when the outermost block ends
        return super().__exit__(*exc)

    def _cast(self, t, to: torch.dtype):
        if not _eligible(t) or t.dtype == to:
            return t
        cacheable = to == self.dtype and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
        cacheable = cacheable and not t._is_view() and torch.is_autocast_cache_enabled()
        if not cacheable:
            return t.to(to)
        hit = self._cache.get(id(t))
        if hit is None:
            hit = (t, t.to(to))
            self._cache[id(t)] = hit
            self.casts[hit[1].untyped_storage()] = True
        return hit[1]

    def _cast_all(self, args, kwargs, to):
        def one(a):
            if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a):
                return type(a)(self._cast(x, to) for x in a)
            return self._cast(a, to)

        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION_FP:
            args, kwargs = self._cast_all(args, kwargs, self.dtype)
        elif name in FP32:
            if not (name == "interpolate" and kwargs.get("mode") == "area"):  # area pools, no upsample op
                args, kwargs = self._cast_all(args, kwargs, torch.float32)
        elif name in FP32_SET_OPT_DTYPE:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            explicit = kwargs.get("dtype") is not None or any(isinstance(a, torch.dtype) for a in args)
            if _eligible(first) and not explicit:
                kwargs["dtype"] = torch.float32
        elif name in PROMOTE:
            flat = [a for a in tree_flatten((args, kwargs))[0] if _eligible(a)]
            to = torch.float32 if any(a.dtype == torch.float32 for a in flat) else self.dtype
            args, kwargs = self._cast_all(args, kwargs, to)
        return func(*args, **kwargs)

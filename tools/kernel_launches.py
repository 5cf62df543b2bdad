"""Every Triton kernel launch the latent models make on CUDA, derived on a machine without a GPU: the
launches tools/compile_kernels.py compiles for sm_90. Nothing runs on a device and no kernel executes.

1. Capture. The models (``engine.models.build_model``) run on the CPU at batch 2 with the fused ops they
   call (``FUSED_OPS``: film_layer_norm, channel_layer_norm, linear_gelu and scaled_residual in convnext_film,
   group_norm_film_silu in adm_resnet, adaln_modulate in vit_film) replaced by recorders. A recorder computes
   the op's torch reference (in backward under the forward's autocast), returns it in the kernel's output
   layout (``FusedOp.output``: like x unless the op lays it out otherwise) and notes each operand's dtype,
   strides and storage offset, and in backward those of the incoming gradient. This is done the two ways
   the engine runs a model on CUDA: ``train`` (bf16 autocast, forward and backward:
   engine.training.objective) and ``eval`` (fp32, no grad: engine.evaluate). CPU autocast casts conv and
   linear to bf16 as CUDA's does, but leaves ``layer_norm`` in its input's dtype where CUDA's runs it in fp32:
   ConvNeXt's stem norm hands the first block a bf16 stream here and an fp32 one on CUDA (the first block
   after a downsampling conv gets bf16 on both, and the other blocks fp32).
2. Replay. Each captured call is replayed at the engine's batch sizes through the *public* kernel
   function (operand checks and preparation included) with ``use_triton`` forced on and each
   JITFunction's launch replaced by a recorder of its arguments, so block sizes, warps, strides and grids
   come from the wrappers' own code (``_blocks``, ``_grid``, ``plane_tile``). Operands are untouched
   ``torch.empty`` buffers (no memory is written; only pointers, dtypes and ints reach Triton).

The specialisations, derived as above from:

- ConvNeXt-T-FiLM on 32x64x64 latents (stem stride 4): film_layer_norm closing stages 1-3 before each
  downsampling, 96@16x16, 192@8x8, 384@4x4 (x channels-last, from the blocks' permute), and the head's norm
  at 768@1x1 (stage 4's 768@2x2 map is pooled before FiLM + LayerNorm, see convnext_film). Under autocast
  x is the fp32 residual stream with bf16 FiLM scale/shift. In every block: channel_layer_norm on the
  depthwise conv's output (bf16 under autocast, written channels-last), linear_gelu on its rows (fc1, bf16
  matmul output with the fp32 bias) and scaled_residual adding the bf16 branch (fc2's rows, a channels-last
  view) to the stream, fp32 or, in a stage's first block, the downsampling conv's bf16 output.
- ADM-S-FiLM and ADM-B-FiLM on 4x32x32 and 32x64x64 latents: group_norm_film_silu (32 groups) at every
  ResBlock's norm1 (no FiLM: zero scale/shift) and norm2 (FiLM), and out_norm; bf16 under autocast.
- ViT-S-FiLM on 4x32x32 and 32x64x64 latents (patch 4: 64 and 256 tokens of 384 channels) and ViT-B-FiLM
  on 32x64x64 (256 tokens of 768): adaln_modulate before every block's attention and MLP, and on the
  pooled token (T = 1) before the head. Under autocast x is the fp32 residual stream, scale/shift bf16.
- The standalone ops' calls (``standalone_calls``: add_noise, the lean step's Adam, layer-scale unfold,
  folded weight casts and residual pair), called without a model.
- Batches: training at the per-rank batch of the default --batch-size 256 on 1, 2, 4 or 8 GPUs (256, 128,
  64, 32: the backwards of the norms, scaled_residual and linear_gelu split their reduction by batch and SM count, taken
  as 132, the SMs of H100 SXM and H200); evaluation at engine.evaluate's 256 and a 1-sample tail batch.

Not covered: kernels.film (no model calls it), add_noise(return_noise=True) (the engine never asks),
seed == 1 (a constexpr specialisation the engine's seeds do not hit), torch.compile'd models, and
layouts other than those the models produce.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

from standalone_calls import BY_NAME, STANDALONE_OPS  # tools/ itself, as compile_kernels imports this file

SMS = 132  # streaming multiprocessors of H100 SXM and H200 (the backward position split is made for them)
CAPTURE_BATCH = 2
MODELS = (  # (registry name, latent (C, H, W)) at the paper's scale
    ("convnext-t-film", (32, 64, 64)),
    ("adm-s-film", (4, 32, 32)),
    ("adm-s-film", (32, 64, 64)),
    ("adm-b-film", (4, 32, 32)),
    ("adm-b-film", (32, 64, 64)),
    ("vit-s-film", (4, 32, 32)),
    ("vit-s-film", (32, 64, 64)),
    ("vit-b-film", (32, 64, 64)),
)
TRAIN_BATCHES = (256, 128, 64, 32)  # per-rank batch of --batch-size 256 on 1, 2, 4, 8 GPUs
EVAL_BATCHES = (256, 1)  # engine.evaluate.EVAL_BATCH and the shortest tail batch
# (module, JITFunction name) of every kernel the models launch, forward and backward
KERNELS = (
    ("kernels.film_layer_norm", "_film_layer_norm_fwd"),
    ("kernels.film_layer_norm", "_film_layer_norm_bwd"),
    ("kernels.linear_gelu", "_bias_gelu_fwd"),
    ("kernels.linear_gelu", "_bias_gelu_bwd"),
    ("kernels.scaled_residual", "_scaled_residual_fwd"),
    ("kernels.scaled_residual", "_scaled_residual_bwd"),
    ("kernels.group_norm_film_silu", "_group_norm_film_silu_fwd"),
    ("kernels.group_norm_film_silu", "_group_norm_film_silu_bwd"),
    ("kernels.adaln_modulate", "_adaln_modulate_fwd"),
    ("kernels.adaln_modulate", "_adaln_modulate_bwd"),
    ("kernels.add_noise", "_add_noise_fwd"),
    ("kernels.add_noise", "_add_noise_bwd"),
    ("kernels.adam_bf16_moments", "_adam_bf16_moments_kernel"),
    ("kernels.layer_scale_unfold", "_unfold_layer_scale"),
    ("kernels.cast_folded", "_cast_folded"),
)
QUICK = (("convnext-t-film", (32, 64, 64)), ("adm-b-film", (32, 64, 64)), ("vit-s-film", (32, 64, 64)))  # one each


# ---------------------------------------------------------------------------------------------- capture


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Layout of one operand: the shape after the batch dim (whole shape if unbatched), strides, offset."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: str
    batched: bool
    requires_grad: bool

    @staticmethod
    def of(t, batched: bool = True) -> TensorSpec:
        shape = tuple(t.shape[1:]) if batched else tuple(t.shape)
        return TensorSpec(
            shape, t.stride(), t.storage_offset(), str(t.dtype).removeprefix("torch."), batched, t.requires_grad
        )

    def make(self, batch: int):
        """A tensor of this layout at ``batch``: a view into an untouched buffer (small ones hold ones, so
        value checks such as add_noise's std > 0 pass)."""
        import torch

        size = (batch, *self.shape) if self.batched else self.shape
        extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(size, self.stride))
        base = torch.empty(extent, dtype=getattr(torch, self.dtype))
        if extent <= 1 << 16:
            base.fill_(1)
        t = base.as_strided(size, self.stride, self.offset)
        return t.requires_grad_() if self.requires_grad else t


@dataclasses.dataclass
class Call:
    """One call of a fused op as a model makes it: operands (in the public function's order), parameters,
    and the layout of the gradient its backward receives (training only)."""

    op: str
    mode: str
    tensors: dict[str, TensorSpec]
    params: dict
    dy: TensorSpec | None = None
    sites: list[str] = dataclasses.field(default_factory=list)

    def key(self):
        return (self.op, self.mode, tuple(self.tensors.items()), tuple(sorted(self.params.items())), self.dy)


def _recorder_function():
    import torch

    class Recorded(torch.autograd.Function):
        """The op's reference in the kernel's layouts (the output as ``output`` lays it out, dx like x), noting dy's
        layout."""

        @staticmethod
        def forward(ctx, call, reference, output, *tensors):
            ctx.call, ctx.reference = call, reference
            ctx.autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
            ctx.save_for_backward(*tensors)
            y = reference(*tensors)
            return output(tensors[0], y).copy_(y)

        @staticmethod
        def backward(ctx, dy):
            ctx.call.dy = TensorSpec.of(dy)
            needs = ctx.needs_input_grad[2:]
            inputs = [t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, needs)]
            enabled, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast("cpu", dtype, enabled=enabled):  # as the forward ran it
                y = ctx.reference(*inputs)
            grads = iter(torch.autograd.grad(y, [t for t in inputs if t.requires_grad], dy))
            out = [next(grads) if t.requires_grad else None for t in inputs]
            if out[0] is not None:
                out[0] = torch.empty_like(inputs[0]).copy_(out[0])
            return (None, None, None, *out)

    return Recorded


def _like_x(x, y, params: dict):
    import torch

    return torch.empty_like(x, dtype=y.dtype)


def _rows(x, y, params: dict):
    import torch

    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _channels_last_if_asked(x, y, params: dict):
    import torch

    return torch.empty_like(x, memory_format=torch.channels_last if params["channels_last"] else torch.preserve_format)


@dataclasses.dataclass(frozen=True)
class FusedOp:
    """A fused op a model family calls: ``kernels.<module>.<name>`` (and its ``<name>_reference``, same
    signature; module is the name unless given), imported by name into ``model``; the operands without a batch
    dimension; how a call's site reads; the output the kernel path allocates, given x, the reference's output y
    and the call's parameters (default: like x)."""

    name: str
    family: str  # the registry names' prefix: convnext-t-film -> convnext
    model: str
    unbatched: frozenset[str]
    site: Callable[[object, dict], str]  # (x, parameters) -> the call's shape, for the report
    output: Callable[[object, object, dict], object] = _like_x
    module: str | None = None

    @property
    def path(self) -> str:
        return f"kernels.{self.module or self.name}"

    def public(self):
        return getattr(_module(self.path), self.name)

    def reference(self):
        return getattr(_module(self.path), f"{self.name}_reference")


def _plane(x, params: dict | None = None) -> str:
    return f"{x.shape[1]}@{'x'.join(map(str, x.shape[2:]))}"


def _tokens(x, params: dict) -> str:
    return f"{x.shape[1]} tokens x {x.shape[2]}"


def _row_width(x, params: dict) -> str:
    return f"rows of {x.shape[-1]}"


FUSED_OPS = (
    FusedOp("film_layer_norm", "convnext", "engine.models.convnext_film", frozenset({"weight", "bias"}), _plane),
    FusedOp(
        "channel_layer_norm",
        "convnext",
        "engine.models.convnext_film",
        frozenset({"weight", "bias"}),
        _plane,
        _channels_last_if_asked,
        "film_layer_norm",
    ),
    FusedOp("linear_gelu", "convnext", "engine.models.convnext_film", frozenset({"weight", "bias"}), _row_width, _rows),
    FusedOp("scaled_residual", "convnext", "engine.models.convnext_film", frozenset({"gamma"}), _plane),
    FusedOp(
        "group_norm_film_silu",
        "adm",
        "engine.models.adm_resnet",
        frozenset({"weight", "bias"}),
        lambda x, p: f"{_plane(x)}/{p['num_groups']}g",
    ),
    FusedOp("adaln_modulate", "vit", "engine.models.vit_film", frozenset(), _tokens),
)


def capture(models=MODELS) -> list[Call]:
    """Every call of a ``FUSED_OPS`` op the models make, in train and eval mode."""
    import torch

    from engine.models import build_model

    recorded = _recorder_function()
    calls: list[Call] = []
    state = {"mode": None, "site": None}

    def recorder(op: FusedOp):
        signature, reference = inspect.signature(op.public()), op.reference()

        def record(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            tensors = {n: v for n, v in bound.arguments.items() if isinstance(v, torch.Tensor)}
            params = {n: v for n, v in bound.arguments.items() if n not in tensors}
            call = Call(
                op.name,
                state["mode"],
                {n: TensorSpec.of(t, batched=n not in op.unbatched) for n, t in tensors.items()},
                params,
                sites=[f"{state['site']} {op.site(tensors['x'], params)}"],
            )
            calls.append(call)
            names = list(tensors)
            return recorded.apply(
                call,
                lambda *ts: reference(**{**params, **dict(zip(names, ts))}),
                lambda x, y: op.output(x, y, params),
                *tensors.values(),
            )

        return record

    saved = [(_module(op.model), op.name, getattr(_module(op.model), op.name)) for op in FUSED_OPS]
    for op in FUSED_OPS:
        setattr(_module(op.model), op.name, recorder(op))
    try:
        torch.manual_seed(0)
        for name, (c, h, w) in models:
            model = build_model(name, c, 2, latent_size=h)
            x, c_noise = torch.randn(CAPTURE_BATCH, c, h, w), torch.zeros(CAPTURE_BATCH)
            state["site"] = f"{name}@{c}x{h}x{w}"
            state["mode"] = "train"  # engine.training.objective: bf16 autocast, forward and backward
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x, c_noise)
            logits.float().sum().backward()
            state["mode"] = "eval"  # engine.evaluate: fp32, no grad
            model.eval()
            with torch.no_grad():
                model(x, c_noise)
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)
    return calls


def merge(calls: list[Call]) -> list[Call]:
    """Calls with equal layouts and parameters, once each, with all their sites."""
    merged: dict = {}
    for call in calls:
        if (key := call.key()) in merged:
            merged[key].sites += [s for s in call.sites if s not in merged[key].sites]
        else:
            merged[key] = dataclasses.replace(call, sites=list(call.sites))
    return list(merged.values())


# ----------------------------------------------------------------------------------------------- replay


@dataclasses.dataclass
class Launch:
    kernel: object  # JITFunction
    args: tuple
    kwargs: dict
    grid: tuple
    use: str


def _public(op: str):
    """The public function of a FUSED_OPS op or of a STANDALONE_OPS one."""
    found = [f.public() for f in FUSED_OPS if f.name == op]
    return found[0] if found else BY_NAME.get(op) or getattr(_module(STANDALONE_OPS[op][0]), op)


def _module(name: str):
    """The module itself (``import kernels.film_layer_norm as m`` gives the function the package re-exports)."""
    import importlib

    return importlib.import_module(name)


def _jit_functions() -> dict[str, object]:
    from triton.runtime.jit import JITFunction

    found = {}
    for module, name in KERNELS:
        fn = getattr(_module(module), name)
        if not isinstance(fn, JITFunction):
            raise RuntimeError(
                f"{module}.{name} is a {type(fn).__name__}, not a JITFunction: the kernels were imported with "
                "TRITON_INTERPRET set; run this tool in a process without it"
            )
        found[name] = fn
    return found


SPLIT_BY_SMS = {  # (extent, block) of the backward kernels that split their reduction by SM count
    "_film_layer_norm_bwd": ("S", "BLOCK_S"),
    "_adaln_modulate_bwd": ("T", "BLOCK_T"),
    "_scaled_residual_bwd": ("S", "BLOCK_S"),
    "_bias_gelu_bwd": ("R", "BLOCK_R"),
}


def _split_for_sms(launch: Launch) -> Launch:
    """The backward kernels of SPLIT_BY_SMS size their position split from the device's SM count, which they
    read as 1 off CUDA; redo the wrapper's split (kernels.common.reduction_split) for SMS SMs, after checking
    that it reproduces the wrapper's at 1."""
    from kernels.common import reduction_split

    fn = launch.kernel.fn
    params = inspect.signature(fn).parameters
    options = {k: v for k, v in launch.kwargs.items() if k not in params}
    bound = inspect.signature(fn).bind(*launch.args, **{k: v for k, v in launch.kwargs.items() if k in params})
    a = bound.arguments
    extent, block = SPLIT_BY_SMS[fn.__name__]
    batch, n_blocks = launch.grid[1], math.ceil(a[extent] / a[block])
    if reduction_split(n_blocks, batch, 1) != (a["BLOCKS_PER_PROGRAM"], launch.grid[0]):
        raise RuntimeError(
            f"{fn.__name__} no longer splits positions with kernels.common.reduction_split "
            f"(wrapper: {a['BLOCKS_PER_PROGRAM']} blocks per program, {launch.grid[0]} programs); update _split_for_sms"
        )
    a["BLOCKS_PER_PROGRAM"], n_split = reduction_split(n_blocks, batch, SMS)
    if "n_split" in a:  # the kernels that index their partial sums by it take it as an argument
        a["n_split"] = n_split
    return Launch(launch.kernel, bound.args, {**bound.kwargs, **options}, (n_split, batch), launch.use)


def replay(calls: list[Call], train_batches=TRAIN_BATCHES, eval_batches=EVAL_BATCHES) -> list[Launch]:
    """The kernel launches the public functions make for each call at each batch size (nothing runs)."""
    import torch

    jit = _jit_functions()
    launches: list[Launch] = []
    current = {"use": ""}

    def recorder(fn):
        def run(*args, grid, warmup, **kwargs):
            launches.append(Launch(fn, args, kwargs, tuple(grid), current["use"]))

        return run

    paths = {*(op.path for op in FUSED_OPS), *(path for path, _ in STANDALONE_OPS.values())}
    modules = [m for m in map(_module, paths) if hasattr(m, "use_triton")]  # those that may take the reference
    saved_use_triton = [m.use_triton for m in modules]
    for fn in jit.values():
        fn.run = recorder(fn)
    for m in modules:
        m.use_triton = lambda x: True
    try:
        for call in calls:
            for batch in {"train": train_batches, "eval": eval_batches}.get(call.mode, (1,)):  # "step": no batch
                current["use"] = f"{call.mode} B={batch}: " + ", ".join(call.sites)
                tensors = {name: spec.make(batch) for name, spec in call.tensors.items()}
                train = call.mode == "train"  # captured under bf16 autocast, as engine.training.objective runs
                with torch.set_grad_enabled(train), torch.autocast("cpu", torch.bfloat16, enabled=train):
                    y = _public(call.op)(**tensors, **call.params)
                    wanted = [t for t in tensors.values() if t.requires_grad]
                    if call.mode == "train" and call.dy is not None and wanted:
                        torch.autograd.grad(y, wanted, call.dy.make(batch))
    finally:
        for fn in jit.values():
            del fn.run
        for m, saved in zip(modules, saved_use_triton):
            m.use_triton = saved
    return [_split_for_sms(x) if x.kernel.fn.__name__ in SPLIT_BY_SMS else x for x in launches]


def derive(selected: list[str], quick: bool = False) -> tuple[list[Call], list[Launch]]:
    """(the distinct calls, their launches of the JITFunctions named in ``selected``): every model of ``MODELS``
    (``QUICK`` with ``quick``) captured and replayed at the engine's batch sizes, and the standalone ops' calls."""
    models, train, evals = (
        (QUICK, TRAIN_BATCHES[:1], EVAL_BATCHES[:1]) if quick else (MODELS, TRAIN_BATCHES, EVAL_BATCHES)
    )
    modules = {module for module, name in KERNELS if name in selected}
    ops = {f.name for f in FUSED_OPS if f.path in modules}
    ops |= {op for op, (path, _) in STANDALONE_OPS.items() if path in modules}
    families = {f.family for f in FUSED_OPS if f.name in ops}
    models = [m for m in models if m[0].split("-")[0] in families]  # skip models whose kernels are not checked
    standalone = [call for op, (_, calls) in STANDALONE_OPS.items() if op in ops for call in calls(quick)]
    calls = merge(capture(models) + standalone)
    return calls, [x for x in replay(calls, train, evals) if x.kernel.fn.__name__ in selected]

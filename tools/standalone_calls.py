"""The calls of the fused ops the engine makes outside any model (the optimizer's step, the training inputs, the
lean ops' own forward and backward), for tools/kernel_launches.py to replay beside the models' captured calls: op
-> (module, its calls), ``STANDALONE_OPS``. Each builder lays out its operands as the engine does:

- add_noise on (B, 32, 64, 64) and (B, 4, 32, 32) fp16 latents (fp32 mean/std/alpha/sigma, offset 0,
  mask_p 0.2 and a bf16 output in training, 0 and fp16 in evaluation), with one seed of each class Triton
  specialises on: i32, i32 divisible by 16, i64, i64 divisible by 16 (the engine's seeds are ``step_seed`` values
  below 2**62).
  Its backward is compiled too, though training never asks for it (stored latents need no gradient).
- adam_bf16_moments_ (the lean step's bf16-moment Adam, ``engine.training.optimizers.Bf16MomentAdam``) on flat
  pieces of ``UPDATE_CHUNK`` elements and a short odd one, with each class of ``ADAM_SEEDS`` and Philox counters
  from 0 and from one piece on; no batch.
- unfold_layer_scale_ (the lean ConvNeXt blocks' fc2 gradients, ``kernels.fused_mlp``) at every stage width of
  ConvNeXt-T and of the smallest FiLM ConvNeXt (atto): C x 4C fp32 weights, the folded bias gradient in bf16.
- cast_folded (the lean ConvNeXt blocks' weights, ``kernels.fused_mlp``) at every stage width of ConvNeXt-T and
  atto: conv and fc1 weights cast, fc2's weight (and in the forward its bias) folded with the layer scale, to bf16.
- dropped_residual_forward / _backward (the lean ConvNeXt blocks' drop and residual add, ``kernels.convnext_block``)
  at every stage of ConvNeXt-T on 32x64x64 latents: fp32 and bf16 streams, the bf16 branch channels-last, with and
  without drop factors (no layer scale: fc2 carries it).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel_launches import Call

SEEDS = {"i32": 2, "i32/16": 16, "i64": 2**40 + 2, "i64/16": 2**40}  # add_noise seed classes
# Bf16MomentAdam's seeds, (rounding seed << 32) + step: bucket 0 at step 1 (== 1, a constexpr specialisation), at
# step 2 and 16, and a later bucket (i64, 16-divisible or not)
ADAM_SEEDS = {"1": 1, "i32": 2, "i32/16": 16, "i64": (3 << 32) + 2, "i64/16": 3 << 32}
MASK_P = {"train": 0.2, "eval": 0.0}
TARGET_STD = 0.5
LATENTS = ((32, 64, 64), (4, 32, 32))  # add_noise inputs: the stored fp16 latents


def add_noise_calls(quick: bool = False) -> list[Call]:
    """add_noise as engine.training.inputs calls it on stored fp16 latents (no model capture needed); quick: the
    first latent, an i32 and an i64 seed."""
    import torch
    from kernel_launches import CAPTURE_BATCH, Call, TensorSpec  # at the call: that module imports this one

    seeds = {name: seed for name, seed in SEEDS.items() if not (quick and name.endswith("/16"))}
    # the output: in training the network's bf16 input, written by the pass (LatentInputs.noised on CUDA); in
    # evaluation the stored dtype, widened after
    out_dtype = {"train": {"out_dtype": torch.bfloat16}, "eval": {}}
    calls = []
    for c, h, w in LATENTS[:1] if quick else LATENTS:
        x = torch.empty(CAPTURE_BATCH, c, h, w, dtype=torch.float16)
        per_channel, per_sample = torch.empty(c), torch.empty(CAPTURE_BATCH)
        for mode in ("train", "eval"):
            for seed_class, seed in seeds.items():
                spec = dataclasses.replace(TensorSpec.of(x), requires_grad=mode == "train")  # to reach backward
                calls.append(
                    Call(
                        "add_noise",
                        mode,
                        {
                            "x": spec,
                            "mean": TensorSpec.of(per_channel, batched=False),
                            "std": TensorSpec.of(per_channel, batched=False),
                            "alpha": TensorSpec.of(per_sample),
                            "sigma": TensorSpec.of(per_sample),
                        },
                        {"seed": seed, "mask_p": MASK_P[mode], "target_std": TARGET_STD} | out_dtype[mode],
                        dy=spec if mode == "train" else None,
                        sites=[f"latents {c}x{h}x{w} seed {seed_class}"],
                    )
                )
    return calls


def adam_calls(quick: bool = False) -> list[Call]:
    """adam_bf16_moments_ as Bf16MomentAdam calls it on a bucket's pieces (no model capture needed)."""
    import torch
    from kernel_launches import Call, TensorSpec  # at the call: that module imports this one

    from engine.training.optimizers import UPDATE_CHUNK

    hyper = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "step": 1}
    calls = []
    for n in (UPDATE_CHUNK, 3001):
        buffers = {
            "grad": TensorSpec.of(torch.empty(n), batched=False),
            "exp_avg": TensorSpec.of(torch.empty(n, dtype=torch.bfloat16), batched=False),
            "exp_avg_sq": TensorSpec.of(torch.empty(n, dtype=torch.bfloat16), batched=False),
        }
        for seed_class, seed in ADAM_SEEDS.items():
            for offset in (0, UPDATE_CHUNK):
                calls.append(
                    Call(
                        "adam_bf16_moments_",
                        "step",
                        buffers,
                        {**hyper, "seed": seed, "offset": offset},
                        sites=[f"piece of {n} seed {seed_class} from {offset}"],
                    )
                )
    return calls


def _lean_block_widths() -> list[int]:
    """The stage widths of ConvNeXt-T and of the smallest FiLM ConvNeXt (atto): the lean block's weight shapes."""
    from engine.models.convnext_film import CONVNEXT_PRESETS

    return sorted({c for preset in ("convnext-t", "convnext-atto") for c in CONVNEXT_PRESETS[preset]["dims"]})


def unfold_calls(quick: bool = False) -> list[Call]:
    """unfold_layer_scale_ as the lean ConvNeXt blocks' backward calls it, per stage width (no batch)."""
    import torch
    from kernel_launches import Call, TensorSpec  # at the call: that module imports this one

    calls = []
    for c in _lean_block_widths():
        weight, vector = torch.empty(c, 4 * c), torch.empty(c)
        specs = {"dw_folded": weight, "db_folded": torch.empty(c, dtype=torch.bfloat16), "w2": weight}
        specs |= {"b2": vector, "scale": vector}
        tensors = {name: TensorSpec.of(t, batched=False) for name, t in specs.items()}
        calls.append(Call("unfold_layer_scale_", "step", tensors, {}, sites=[f"lean block fc2 {c}x{4 * c}"]))
    return calls


def cast_folded_calls(quick: bool = False) -> list[Call]:
    """cast_folded as the lean ConvNeXt blocks call it (``kernels.fused_mlp``'s forward_weights and
    backward_weights), per stage width of ConvNeXt-T and atto: the conv's and fc1's weights cast, fc2's (and in the
    forward its bias) folded with the layer scale, to bf16; no batch."""
    import torch
    from kernel_launches import Call, TensorSpec  # at the call: that module imports this one

    calls = []
    for c in _lean_block_widths():
        plain, fc2 = [torch.empty(c, 1, 7, 7), torch.empty(c), torch.empty(4 * c, c)], torch.empty(c, 4 * c)
        for way, folded in (("forward", [fc2, torch.empty(c)]), ("backward", [fc2])):
            tensors = {f"plain{i}": TensorSpec.of(t, batched=False) for i, t in enumerate(plain)}
            tensors |= {f"folded{i}": TensorSpec.of(t, batched=False) for i, t in enumerate(folded)}
            tensors["scale"] = TensorSpec.of(torch.empty(c), batched=False)
            site = [f"lean block {c} {way}"]
            calls.append(Call("cast_folded", "step", tensors, {"dtype": torch.bfloat16}, sites=site))
    return calls


def _cast_folded_by_name(scale, dtype, **tensors):
    """cast_folded with its lists given by name (plain0, plain1, ..., folded0, ...), as a Call holds operands."""
    from kernels.cast_folded import cast_folded

    listed = {kind: [t for name, t in tensors.items() if name.startswith(kind)] for kind in ("plain", "folded")}
    return cast_folded(listed["plain"], listed["folded"], scale, dtype)


def residual_calls(quick: bool = False) -> list[Call]:
    """dropped_residual_forward and _backward as the lean ConvNeXt blocks call them (``kernels.convnext_block``), per
    stage of convnext-t on the first latent: an fp32 or bf16 stream, the bf16 branch in fc2's channels-last rows
    (its gradient written so), with and without drop factors; quick: the first stage."""
    import torch
    from kernel_launches import CAPTURE_BATCH, Call, TensorSpec  # at the call: that module imports this one

    from engine.models.convnext_film import CONVNEXT_PRESETS

    _, height, width = LATENTS[0]
    dims = CONVNEXT_PRESETS["convnext-t"]["dims"]
    calls = []
    for stage, c in enumerate(dims[:1] if quick else dims):
        h, w = height // 4 >> stage, width // 4 >> stage  # the stem patchifies by 4, each downsample halves
        branch = TensorSpec.of(torch.empty(CAPTURE_BATCH, h, w, c, dtype=torch.bfloat16).permute(0, 3, 1, 2))
        for stream in (torch.float32, torch.bfloat16):
            x = TensorSpec.of(torch.empty(CAPTURE_BATCH, c, h, w, dtype=stream))
            for keep in (TensorSpec.of(torch.empty(CAPTURE_BATCH)), None):
                tensors, params = ({"keep": keep}, {}) if keep is not None else ({}, {"keep": None})
                site = [f"lean block {c}@{h}x{w}, {x.dtype} stream" + (", drop" if keep is not None else "")]
                forward = {"x": x, "branch": branch} | tensors
                backward = {"dout": x} | tensors | {"out": branch}
                # "train": at the training batches (the backward's split depends on them), no autograd of its own
                calls.append(Call("dropped_residual_forward", "train", forward, params, sites=site))
                calls.append(Call("dropped_residual_backward", "train", backward, params, sites=site))
    return calls


STANDALONE_OPS = {  # ops called without a model capture: op -> (module, its calls(quick))
    "add_noise": ("kernels.add_noise", add_noise_calls),
    "adam_bf16_moments_": ("kernels.adam_bf16_moments", adam_calls),
    "unfold_layer_scale_": ("kernels.layer_scale_unfold", unfold_calls),
    "dropped_residual_forward": ("kernels.scaled_residual", lambda quick: residual_calls(quick)[0::2]),
    "dropped_residual_backward": ("kernels.scaled_residual", lambda quick: residual_calls(quick)[1::2]),
    "cast_folded": ("kernels.cast_folded", cast_folded_calls),
}


# standalone ops whose public function takes lists of tensors: called through one taking them by name
BY_NAME = {"cast_folded": _cast_folded_by_name}

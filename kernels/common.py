"""What every op module shares, kept once (as Liger-Kernel's ops/utils.py): which path runs a call, the
dtypes the kernels take, operand checks, the (B, C, S) view of spatial tensors, the tile of a
plane-wise kernel and the split of a backward's per-channel reduction.

Path (``use_triton``): by default (``auto``) Triton runs on CUDA tensors and the reference on CPU
tensors. ``LATENT_ENGINE_KERNELS`` forces either (``triton`` or ``reference``); forcing ``triton`` on
CPU tensors needs ``TRITON_INTERPRET=1`` (Triton's interpreter), which is how the tests check the
kernels without a GPU while the rest of the suite keeps the fast reference path.
"""

from __future__ import annotations

import os

import torch
import triton

ENV_VAR = "LATENT_ENGINE_KERNELS"
_CHOICES = ("auto", "triton", "reference")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(x: torch.Tensor) -> bool:
    """True when the call on ``x`` should run the Triton kernel."""
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {', '.join(_CHOICES)}")
    if choice == "reference":
        return False
    runnable = x.is_cuda or _interpreting()
    if choice == "triton":
        if not runnable:
            raise RuntimeError(
                f"{ENV_VAR}=triton but the tensor is on {x.device} and TRITON_INTERPRET is not set; "
                "use a CUDA tensor or set TRITON_INTERPRET=1"
            )
        return True
    return x.is_cuda


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op's matmuls and convolutions run in: autocast's where it is on for x's device (and x is not
    fp64), else x's. For the ops written in torch (``fused_mlp``, ``convnext_block``) that cast as autocast would."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


def flat_copy(tensors: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One flat buffer in dtype holding the tensors' values, and its parts shaped as they are, filled by one
    ``torch._foreach_copy_`` (one multi-tensor kernel on CUDA, casting as it copies, where ``.to`` launches one
    kernel per tensor)."""
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=dtype, device=tensors[0].device)
    parts = shaped_like(flat, tensors)
    torch._foreach_copy_(parts, tensors)
    return flat, parts


def shaped_like(flat: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive parts of flat, each viewed in the shape of its tensor."""
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def unread_pointer(device: torch.device) -> torch.Tensor:
    """What a kernel is given for a pointer it does not read or write (an operand a call lacks): one fp32 element,
    so the launch moves nothing more and its specialisation does not change with the other operands' dtypes."""
    return torch.empty(1, dtype=torch.float32, device=device)


def flat_span(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The 1-d view of the memory the tensors fill where they lie back to back in one buffer, in order, each
    contiguous (as ``shaped_like``'s parts of one flat buffer, or slices of them); None otherwise."""
    first = tensors[0]
    if first._base is None:
        return None
    base, start = first._base, first.storage_offset()
    end = start
    for t in tensors:
        if t._base is not base or t.dtype != first.dtype or not t.is_contiguous() or t.storage_offset() != end:
            return None
        end += t.numel()
    return first.as_strided((end - start,), (1,), start)


def cast_together(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """The tensors in dtype, as ``t.to(dtype)`` each: those in another dtype by one ``flat_copy``, those in dtype
    already as themselves."""
    todo = [i for i, t in enumerate(tensors) if t.dtype != dtype]
    cast = list(tensors)
    if todo:
        for i, part in zip(todo, flat_copy([tensors[i] for i in todo], dtype)[1]):
            cast[i] = part
    return cast


def check_x(op: str, x: torch.Tensor, dims: tuple[int, ...] | None = None) -> tuple[int, int]:
    """(B, C) of x, which must be a (B, C, *spatial) tensor (of ``dims`` dimensions) in a dtype the kernels take."""
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or (dims is not None and x.dim() not in dims):
        want = " or ".join(f"{d}-d" for d in dims) if dims else "(B, C, *spatial)"
        raise ValueError(f"{op}: x must be a {want} tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: x is {x.dtype}; use float32, float16 or bfloat16")
    return x.shape[0], x.shape[1]


def check_operands(
    op: str,
    x: torch.Tensor,
    operands: tuple[tuple[str, torch.Tensor, tuple[int, ...]], ...],
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES,
) -> None:
    """Each (name, tensor, expected shape) is a tensor of that shape, in one of ``dtypes``, on x's device."""
    for name, t, shape in operands:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor of shape {shape}, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {shape} for x {tuple(x.shape)}")
        if t.dtype not in dtypes:
            raise TypeError(
                f"{op}: {name} is {t.dtype}; use {' or '.join(str(d).removeprefix('torch.') for d in dtypes)}"
            )
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}; put all inputs on one device")


def spatial_flat(t: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) as (B, C, S): a view when the spatial dims merge (contiguous, channels-last), else a copy."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def plane_tile(n_rows: int, S: int, tile: int) -> tuple[int, int]:
    """(ROWS, BLOCK_S) of a kernel over (row, position) planes: whole short planes, several per program;
    long planes split along positions, ``tile`` elements per program."""
    block_s = min(triton.next_power_of_2(S), tile)
    return min(triton.next_power_of_2(n_rows), max(1, tile // block_s)), block_s


def channel_tile(C: int, S: int, tile: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_S, num_warps) of a kernel over (channel, position) tiles that holds all C channels of a
    position: the positions fill the rest of ``tile`` elements."""
    block_c = triton.next_power_of_2(C)
    block_s = max(1, min(triton.next_power_of_2(S), tile // block_c))
    return block_c, block_s, 4 if block_c * block_s <= 2048 else 8


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (the interpreter, CPU)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def reduction_split(n_blocks: int, batch: int, sms: int) -> tuple[int, int]:
    """(blocks per program, programs per sample) of a backward that reduces per-channel partial sums over
    ``n_blocks`` position blocks: about 4 programs per SM across the batch, each taking whole blocks."""
    per_program = triton.cdiv(n_blocks, min(n_blocks, triton.cdiv(4 * sms, batch)))
    return per_program, triton.cdiv(n_blocks, per_program)

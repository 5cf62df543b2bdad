"""The optimizer of a training step, and how much memory its side of the step takes: `--optimizer-memory`.

``plain``: one Adam/AdamW over all parameters, stepped after the backward, so every gradient (as large as the
weights) is alive at once, and until the next step's ``zero_grad`` even through the next forward.
``in-backward``: the parameters in buckets of about ``BUCKET_BYTES``, filled in reverse registration order (roughly
the order a backward produces gradients in), one Adam/AdamW per bucket, stepped in a post-accumulate-grad hook as
soon as the bucket's last gradient is ready, its gradients then dropped (PyTorch's tutorial "How to save memory by
fusing the optimizer step into the backward pass", stepping buckets as DDP reduces them): a few buckets' gradients
are alive at any time (a gradient that comes late, such as a FiLM layer's, registered last but reached at the end
of the backward, holds its bucket open). Buckets, not single parameters, because every optimizer step launches
kernels: one optimizer per parameter launched a few per parameter, one per bucket launches a few per bucket (with
the fused kernel below). A parameter that gets no gradient in a step would leave its bucket waiting: ``step`` after
the backward steps every bucket still partly filled. The same update, parameter by parameter, so the same weights
as ``plain`` (bit for bit where the implementations agree: on a CPU, which loops per tensor either way).
``in-backward-bf16``: the same, with Adam's two moments stored in bf16 (``Bf16MomentAdam``, updating a bucket in
multi-tensor ops, on CUDA one Triton kernel a piece): the optimizer's state halves, from 8 to 4 bytes per
parameter. Not the same mathematics: the moments are rounded after every update, stochastically, since
round-to-nearest would freeze the second moment (its per-step change, 1 - beta2 = 0.1 % of itself, is below bf16's
half-ulp of 0.2 %).

Adam's implementation follows the device, not the run: on CUDA torch's fused kernel (``fused=True``: one launch
for many tensors, where the foreach default launches one per element-wise pass and the CPU's default loops per
tensor), elsewhere torch's default (a per-tensor loop on a CPU, whose numbers the bit-exact fixtures hold). A
checkpoint carries the choice of the device that wrote it; loading keeps this optimizer's, so a run resumes on
another device with that device's kernel.

Why its own option and not part of ``--memory lean``: ``--memory`` is the model's (what its blocks keep for the
backward, the same function either way; image models have none), this is the step's; and bf16 moments change
the numbers a run produces, which a user choosing lean activations should not get unasked. Both are recorded
in config.json and a resume must repeat them.

What in-backward steps cannot do: anything that needs all gradients before any step, such as clipping by
their global norm or unscaling a GradScaler's gradients (the loop does neither: bf16 autocast needs no
scaler), or averaging them across ranks, which DDP does after the hooks ran (so ``engine train`` refuses it
with several ranks). ``zero_grad`` remains, as a no-op, so ``train_step`` runs either kind.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable

import torch

from engine.errors import UsageError
from kernels.adam_bf16_moments import adam_bf16_moments_, stochastic_bf16_reference
from kernels.common import flat_copy, flat_span, shaped_like, use_triton

# Bytes of parameters stepped together in the backward: half DDP's default bucket (bucket_cap_mb=25), for the same
# trade. Large enough that a bucket's step is a few multi-tensor launches however many small tensors it holds
# (convnext-t-film's 28.7 M parameters make twelve buckets of its 192 tensors); small enough that the gradients
# waiting for their bucket's last stay a small part of all of them (115 MB for convnext-t-film in fp32). Halved
# from DDP's because a bucket's step, its gradients beside its update's temporaries, is the peak of a lean step at
# scale (predicted by bench.predict, convnext-t-film @ flux2-512 lean at batch 256 on h200-sxm: 0.584 GiB with
# 25 MiB, 0.552 with 12 MiB, 0.543 with 8 MiB; 2,074, 2,126 and 2,294 ops in the step).
BUCKET_BYTES = 12 * 2**20
# Elements Bf16MomentAdam updates at once, in pieces of one or more parameters: its float32 temporaries (three
# of 4 bytes an element) stay at most 48 MiB whatever a bucket holds. A bucket of BUCKET_BYTES (3 M float32
# elements) is one piece; smaller pieces launch more for nothing: 2 M elements predict 2,408 ops against 2,294 at
# 8 MiB buckets, and the same peak (bench.predict, as above).
UPDATE_CHUNK = 2**22
# Device types whose parameters Adam steps with torch's fused kernel (bench.predict's CUDA emulation patches in
# its stand-in, the CPU). Not the CPU itself: its fused kernel computes in another order than the per-tensor
# loop the bit-exact fixtures hold.
FUSED_DEVICES = ("cuda",)
OPTIMIZER_MEMORY = ("plain", "in-backward", "in-backward-bf16")
OPTIMIZERS = ("adam", "adamw")


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float, memory: str = "plain"
) -> torch.optim.Optimizer | StepInBackward:
    """Adam or AdamW (``name``) over params, stepped as ``memory`` (one of ``OPTIMIZER_MEMORY``) says."""
    if name not in OPTIMIZERS:
        raise UsageError(f"--optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    if memory not in OPTIMIZER_MEMORY:
        raise UsageError(f"--optimizer-memory {memory!r}: expected one of {', '.join(OPTIMIZER_MEMORY)}")
    adam = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    if memory == "plain":
        return device_adam(adam, list(params), lr, weight_decay)
    if memory == "in-backward":
        return StepInBackward(params, lambda bucket, index: device_adam(adam, bucket, lr, weight_decay))
    return StepInBackward(
        params,
        lambda bucket, index: Bf16MomentAdam(
            bucket, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=name == "adamw", rounding_seed=index
        ),
    )


def device_adam(
    adam: type[torch.optim.Adam], params: list[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Adam:
    """``adam`` over params with the implementation their device calls for (``FUSED_DEVICES``), kept on load."""
    fused = bool(params) and all(p.device.type in FUSED_DEVICES for p in params)
    optimizer = adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    optimizer.register_load_state_dict_pre_hook(_keep_implementation)
    return optimizer


def _keep_implementation(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """The loaded groups take this optimizer's fused/foreach choice, not the writer's: before torch places the
    loaded ``step`` tensors, which a fused optimizer keeps on the parameter's device."""
    own = {key: optimizer.defaults[key] for key in ("fused", "foreach")}
    return {**state_dict, "param_groups": [{**group, **own} for group in state_dict["param_groups"]]}


def buckets(params: list[torch.nn.Parameter], capacity: int) -> list[list[int]]:
    """Indices of params in buckets of at most ``capacity`` bytes (a larger parameter alone), filled in reverse
    registration order: a backward produces the last layers' gradients first, so buckets fill one after another."""
    found: list[list[int]] = []
    size = 0
    for index in reversed(range(len(params))):
        nbytes = params[index].numel() * params[index].element_size()
        if not found or size + nbytes > capacity:
            found.append([])
            size = 0
        found[-1].append(index)
        size += nbytes
    return found


class _Bucket:
    """Parameters stepped by one optimizer once each has its gradient of this backward (or at ``flush``)."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer = params, optimizer
        self.arrived: set[int] = set()  # ids, not a count: a hook firing twice for one parameter counts once

    def arrive(self, param: torch.Tensor) -> None:
        self.arrived.add(id(param))
        if len(self.arrived) == len(self.params):
            self.flush()

    def flush(self) -> None:
        """Step what arrived (the optimizer skips a parameter without a gradient), drop the gradients."""
        if not self.arrived:
            return
        self.optimizer.step()
        for p in self.params:
            p.grad = None
        self.arrived.clear()


def _arrive_weakly(bucket: _Bucket) -> Callable[[torch.Tensor], None]:
    """The post-accumulate-grad hook of ``bucket``'s parameters, holding the bucket weakly. A parameter keeps its
    hooks in C++, where Python's collector cannot follow them: a hook holding its bucket (and so the bucket's
    parameters and optimizer) strongly makes a cycle nothing collects, and every model a process trained with
    in-backward steps stayed in memory with its optimizer (a gap study's arms, bench's batch search: 220 MiB
    each for vit-s-film, until the machine ran out)."""
    ref = weakref.ref(bucket)

    def arrive(param: torch.Tensor) -> None:
        if (alive := ref()) is not None:
            alive.arrive(param)

    return arrive


def _remove(hooks: list[torch.utils.hooks.RemovableHandle]) -> None:
    for hook in hooks:
        hook.remove()


class StepInBackward:
    """One optimizer per bucket of parameters (``buckets``), each stepped in its parameters' post-accumulate-grad
    hooks when the bucket's last gradient is in.

    It stands in for the one optimizer the loop holds: ``param_groups`` lists every bucket's group (the loop sets
    the learning rate through them), ``state_dict`` has the layout of one optimizer over all the parameters (so
    checkpoints are named alike, whatever the buckets), ``zero_grad`` is a no-op since each step left no gradient
    behind, and ``step`` steps the buckets a parameter without a gradient left waiting.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        make: Callable[[list[torch.nn.Parameter], int], torch.optim.Optimizer],
    ):
        self.params = [p for p in params if p.requires_grad]
        self.indices = buckets(self.params, BUCKET_BYTES)
        self.buckets = [
            _Bucket(members, make(members, number))
            for number, members in enumerate([self.params[i] for i in indices] for indices in self.indices)
        ]
        self.hooks = [p.register_post_accumulate_grad_hook(_arrive_weakly(b)) for b in self.buckets for p in b.params]
        weakref.finalize(self, _remove, self.hooks)  # a model that outlives its optimizer keeps no dead hooks

    @property
    def param_groups(self) -> list[dict]:
        """Each bucket's group, looked up afresh: ``load_state_dict`` replaces an optimizer's group dicts."""
        return [bucket.optimizer.param_groups[0] for bucket in self.buckets]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: each bucket dropped its gradients after stepping them."""

    def step(self) -> None:
        """Step the buckets still waiting after the backward: those holding a parameter that got no gradient."""
        for bucket in self.buckets:
            bucket.flush()

    def state_dict(self) -> dict:
        state, group = {}, {}
        for indices, bucket in zip(self.indices, self.buckets):
            saved = bucket.optimizer.state_dict()
            group = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
            state.update({indices[local]: entry for local, entry in saved["state"].items()})
        return {
            "state": dict(sorted(state.items())),
            "param_groups": [{**group, "params": list(range(len(self.params)))}],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise UsageError(
                f"optimizer state of {sum(len(g['params']) for g in groups)} parameters in {len(groups)} group(s) "
                f"does not fit this model's {len(self.params)}; resume with the model the run was started with"
            )
        hyper = {k: v for k, v in groups[0].items() if k != "params"}
        saved = state_dict["state"]
        for indices, bucket in zip(self.indices, self.buckets):
            state = {local: saved[index] for local, index in enumerate(indices) if index in saved}
            bucket.optimizer.load_state_dict(
                {"state": state, "param_groups": [{**hyper, "params": list(range(len(indices)))}]}
            )


def round_to_bf16_stochastically(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 ``x`` rounded to bf16, up with probability equal to the dropped fraction: unbiased, so small
    steady changes survive on average. Adds 16 random bits below bf16's mantissa and truncates there."""
    bits = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return stochastic_bf16_reference(x, bits)


MOMENTS = ("exp_avg", "exp_avg_sq")


def _flat_moments(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """Put the moments of params (each with state) in two flat bf16 buffers, one per moment, in params' order
    (per device): a piece of consecutive parameters then has its moments back to back, which the kernel updates in
    place (``update_in_one_kernel``). Missing moments start at zero, present ones are copied in (cast to bf16:
    ``Optimizer.load_state_dict`` casts floating state to its parameter's dtype)."""
    for device in dict.fromkeys(p.device for p in params):
        on_device = [p for p in params if p.device == device]
        for key in MOMENTS:
            flat = torch.zeros(sum(p.numel() for p in on_device), dtype=torch.bfloat16, device=device)
            for p, part in zip(on_device, shaped_like(flat, on_device)):
                if key in optimizer.state[p]:
                    part.copy_(optimizer.state[p][key])
                optimizer.state[p][key] = part


def _moments_flat_again(optimizer: torch.optim.Optimizer) -> None:
    """After loading: the loaded moments (each its own tensor, in the parameter's dtype) back in flat buffers."""
    for group in optimizer.param_groups:
        _flat_moments(optimizer, [p for p in group["params"] if optimizer.state.get(p)])  # get: adds no entry


class Bf16MomentAdam(torch.optim.Optimizer):
    """Adam (AdamW with decoupled_weight_decay) with its moments stored in bf16: torch's single-tensor Adam
    update computed in fp32 from the stored moments, which are then stored rounded stochastically.

    The update of all its parameters runs at once, in multi-tensor (``torch._foreach_*``) ops over pieces of
    ``UPDATE_CHUNK`` elements, so a bucket's step launches a few kernels per piece rather than ~15 per parameter;
    element by element it computes what the single-tensor update does. The moments of the parameters stepped
    together live in one flat bf16 buffer per moment (``_flat_moments``, fresh and after loading). On CUDA
    (``use_triton``) a piece is one kernel (``kernels.adam_bf16_moments``) that updates those moments where they
    lie, after gathering the piece's gradients into a flat buffer and before one multi-tensor add of the change into
    the parameters: 3 launches a piece where the torch ops take 19. The rounding's random bits are keyed by
    (rounding_seed, step): the kernel's are Philox's of that seed and the element's place in the update, the torch ops'
    are drawn from a generator seeded with it afresh for each update; so a resumed run rounds as the uninterrupted one
    did, whatever ran in between (a CUDA run and a CPU run round with different bits). ``step`` in the state is a Python
    int (torch's Adam keeps a tensor), which a checkpoint keeps among its scalars; parameters that missed a step (no
    gradient) are updated apart, with their own step's bias correction.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        rounding_seed: int = 0,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)
        self.rounding_seed = rounding_seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self.register_load_state_dict_post_hook(_moments_flat_again)

    def _generator(self, device: torch.device, seed: int) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(seed)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("Bf16MomentAdam.step takes no closure")
        for group in self.param_groups:
            stepped = [p for p in group["params"] if p.grad is not None]
            fresh = [p for p in stepped if not self.state[p]]
            if fresh:
                for p in fresh:
                    self.state[p]["step"] = 0
                _flat_moments(self, fresh)
            together: dict[tuple[int, torch.device], list[torch.Tensor]] = {}
            for p in stepped:
                state = self.state[p]
                state["step"] += 1
                together.setdefault((state["step"], p.device), []).append(p)
            for (step, _), params in together.items():
                self._update_together(params, group, step)

    def _update_together(self, params: list[torch.Tensor], group: dict, step: int) -> None:
        """Weight decay, then Adam's update of params (all at one step count, on one device) in pieces."""
        lr, decay = group["lr"], group["weight_decay"]
        grads = [p.grad for p in params]
        if decay and group["decoupled_weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * decay)
        elif decay:
            grads = torch._foreach_add(grads, params, alpha=decay)
        moments = [(self.state[p]["exp_avg"], self.state[p]["exp_avg_sq"]) for p in params]
        slices = [part for p, g, (m, v) in zip(params, grads, moments) for part in _slices(p, g, m, v)]
        seed = (self.rounding_seed << 32) + step
        if use_triton(params[0]):
            offset = 0  # the Philox counters of a piece follow the last piece's
            for piece in _pieces(slices):
                offset += update_in_one_kernel(*map(list, zip(*piece)), group, step, seed, offset)
            return
        generator = self._generator(params[0].device, seed)
        for piece in _pieces(slices):
            update_in_torch_ops(*map(list, zip(*piece)), group, step, generator)


def _slices(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The tensors in matching flat slices of UPDATE_CHUNK elements; whole where one is not contiguous (a
    channels-last conv weight), as an element-wise update may take them in any layout."""
    if not all(t.is_contiguous() for t in tensors):
        return [tensors]
    flat = [t.view(-1) for t in tensors]
    return [tuple(t[start : start + UPDATE_CHUNK] for t in flat) for start in range(0, flat[0].numel(), UPDATE_CHUNK)]


def _pieces(slices: list[tuple[torch.Tensor, ...]]) -> list[list[tuple[torch.Tensor, ...]]]:
    """Consecutive slices in pieces of at most UPDATE_CHUNK elements (a larger slice alone): one update each."""
    found: list[list[tuple[torch.Tensor, ...]]] = []
    size = 0
    for part in slices:
        if not found or size + part[0].numel() > UPDATE_CHUNK:
            found.append([])
            size = 0
        found[-1].append(part)
        size += part[0].numel()
    return found


def update_in_torch_ops(
    params, grads, exp_avgs, exp_avg_sqs, group: dict, step: int, generator: torch.Generator
) -> None:
    """Adam's update of (slices of) a few parameters, in float32 from bf16 moments stored back rounded."""
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    # one fp32 moment at a time beside the parameters: the second, turned into the denominator in place
    second, seconds = flat_copy(exp_avg_sqs, torch.float32)
    torch._foreach_mul_(seconds, beta2)
    torch._foreach_addcmul_(seconds, grads, grads, value=1 - beta2)
    torch._foreach_copy_(exp_avg_sqs, shaped_like(round_to_bf16_stochastically(second, generator), exp_avg_sqs))
    second.sqrt_().div_(math.sqrt(1 - beta2**step)).add_(eps)
    first, firsts = flat_copy(exp_avgs, torch.float32)
    torch._foreach_lerp_(firsts, grads, 1 - beta1)
    torch._foreach_copy_(exp_avgs, shaped_like(round_to_bf16_stochastically(first, generator), exp_avgs))
    torch._foreach_addcdiv_(params, firsts, seconds, value=-lr / (1 - beta1**step))


def update_in_one_kernel(params, grads, exp_avgs, exp_avg_sqs, group: dict, step: int, seed: int, offset: int) -> int:
    """``update_in_torch_ops``'s step of (slices of) a few parameters as one Triton kernel over a flat copy of their
    gradients and their moments, in place where they lie back to back (``_flat_moments``), else gathered and
    scattered back; returns how many elements it updated (Philox counters it used from offset)."""
    change, changes = flat_copy(grads, torch.float32)  # the kernel overwrites it with the parameters' change
    first, second = flat_span(exp_avgs), flat_span(exp_avg_sqs)
    gathered = first is None or second is None
    if gathered:
        first, second = flat_copy(exp_avgs, torch.bfloat16)[0], flat_copy(exp_avg_sqs, torch.bfloat16)[0]
    adam_bf16_moments_(change, first, second, group["lr"], group["betas"], group["eps"], step, seed, offset)
    if gathered:
        torch._foreach_copy_(exp_avgs, shaped_like(first, exp_avgs))
        torch._foreach_copy_(exp_avg_sqs, shaped_like(second, exp_avg_sqs))
    torch._foreach_add_(params, changes)
    return change.numel()

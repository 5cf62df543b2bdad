"""The optimizer of a training step, and how much memory its side of the step takes: `--optimizer-memory`.

``plain``: one Adam/AdamW over all parameters, stepped after the backward, so every gradient (as large as the
weights) is alive at once, and until the next step's ``zero_grad`` even through the next forward.
``in-backward``: one Adam/AdamW per parameter, stepped in that parameter's post-accumulate-grad hook as soon
as its gradient is ready, which is then dropped (PyTorch's tutorial "How to save memory by fusing the optimizer
step into the backward pass"): at most a few gradients are alive at any time. The same update, parameter by
parameter, so the same weights as ``plain`` (bit for bit where the per-tensor and multi-tensor Adam kernels
agree: on a CPU, which loops per tensor either way).
``in-backward-bf16``: the same, with Adam's two moments stored in bf16 (``Bf16MomentAdam``): the optimizer's
state halves, from 8 to 4 bytes per parameter. Not the same mathematics: the moments are rounded after every
update, stochastically, since round-to-nearest would freeze the second moment (its per-step change, 1 - beta2
= 0.1 % of itself, is below bf16's half-ulp of 0.2 %).

Why its own option and not part of ``--memory lean``: ``--memory`` is the model's (what its blocks keep for the
backward, the same function either way; image models have none), this is the step's; and bf16 moments change
the numbers a run produces, which a user choosing lean activations should not get unasked. Both are recorded
in config.json and a resume must repeat them.

What in-backward steps cannot do: anything that needs all gradients before any step, such as clipping by
their global norm or unscaling a GradScaler's gradients (the loop does neither: bf16 autocast needs no
scaler), or averaging them across ranks, which DDP does after the hooks ran (so ``engine train`` refuses it
with several ranks). ``zero_grad`` and ``step`` remain, as no-ops, so ``train_step`` runs either kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from engine.errors import UsageError

# Elements of a parameter updated at once by Bf16MomentAdam: its float32 temporaries stay at a few times 4 MiB
# whatever the parameter's size (ConvNeXt-T's largest, 768 x 3072, would need ~40 MiB of them in one piece).
UPDATE_CHUNK = 2**20
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
        return adam(params, lr=lr, weight_decay=weight_decay)
    if memory == "in-backward":
        return StepInBackward(params, lambda p, index: adam([p], lr=lr, weight_decay=weight_decay))
    return StepInBackward(
        params,
        lambda p, index: Bf16MomentAdam(
            [p], lr=lr, weight_decay=weight_decay, decoupled_weight_decay=name == "adamw", rounding_seed=index
        ),
    )


class StepInBackward:
    """One optimizer per parameter, each stepped in its parameter's post-accumulate-grad hook.

    It stands in for the one optimizer the loop holds: ``param_groups`` lists every per-parameter group (the
    loop sets the learning rate through them), ``state_dict`` has the layout of one optimizer over all the
    parameters (so the checkpoint's tensors are named alike), ``zero_grad`` and ``step`` are no-ops since each
    step happened in the backward and left no gradient behind.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        make: Callable[[torch.nn.Parameter, int], torch.optim.Optimizer],
    ):
        self.params = [p for p in params if p.requires_grad]
        self.optimizers = [make(p, index) for index, p in enumerate(self.params)]
        self.hooks = [
            p.register_post_accumulate_grad_hook(self._stepper(opt)) for p, opt in zip(self.params, self.optimizers)
        ]

    @property
    def param_groups(self) -> list[dict]:
        """Each parameter's group, looked up afresh: ``load_state_dict`` replaces an optimizer's group dicts."""
        return [opt.param_groups[0] for opt in self.optimizers]

    @staticmethod
    def _stepper(optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
        def step_now(param: torch.Tensor) -> None:
            optimizer.step()
            param.grad = None

        return step_now

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: each hook dropped its parameter's gradient after stepping it."""

    def step(self) -> None:
        """Nothing left to do: every parameter was stepped in the backward."""

    def state_dict(self) -> dict:
        states = [opt.state_dict() for opt in self.optimizers]
        group = {k: v for k, v in states[0]["param_groups"][0].items() if k != "params"}
        return {
            "state": {index: s["state"][0] for index, s in enumerate(states) if 0 in s["state"]},
            "param_groups": [{**group, "params": list(range(len(states)))}],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.optimizers):
            raise UsageError(
                f"optimizer state of {sum(len(g['params']) for g in groups)} parameters in {len(groups)} group(s) "
                f"does not fit this model's {len(self.optimizers)}; resume with the model the run was started with"
            )
        hyper = {k: v for k, v in groups[0].items() if k != "params"}
        for index, opt in enumerate(self.optimizers):
            state = {0: state_dict["state"][index]} if index in state_dict["state"] else {}
            opt.load_state_dict({"state": state, "param_groups": [{**hyper, "params": [0]}]})


def round_to_bf16_stochastically(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 ``x`` rounded to bf16, up with probability equal to the dropped fraction: unbiased, so small
    steady changes survive on average. Adds 16 random bits below bf16's mantissa and truncates there."""
    bits = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    bits.add_(x.contiguous().view(torch.int32)).bitwise_and_(-(1 << 16))
    return bits.view(torch.float32).to(torch.bfloat16)


def _moments_in_bf16(optimizer: torch.optim.Optimizer) -> None:
    """``Optimizer.load_state_dict`` casts floating state to its parameter's dtype; the moments stay bf16."""
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key] = state[key].to(torch.bfloat16)


class Bf16MomentAdam(torch.optim.Optimizer):
    """Adam (AdamW with decoupled_weight_decay) with its moments stored in bf16: torch's single-tensor Adam
    update computed in fp32 from the stored moments, which are then stored rounded stochastically.

    The rounding's random bits are keyed by (rounding_seed, step), drawn from a generator seeded afresh for each
    update, so a resumed run rounds as the uninterrupted one did, whatever ran in between. ``step`` in the state
    is a Python int (torch's Adam keeps a tensor), which a checkpoint keeps among its scalars.
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
        self.register_load_state_dict_post_hook(_moments_in_bf16)

    def _generator(self, device: torch.device, step: int) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed((self.rounding_seed << 32) + step)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("Bf16MomentAdam.step takes no closure")
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)
                state["step"] += 1
                step, grad = state["step"], p.grad
                if decay and group["decoupled_weight_decay"]:
                    p.mul_(1 - lr * decay)
                elif decay:
                    grad = grad.add(p, alpha=decay)
                generator = self._generator(p.device, step)
                for part in _slices(p, grad, state["exp_avg"], state["exp_avg_sq"]):
                    _update(*part, group, step, generator)


def _slices(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The tensors in matching flat slices of UPDATE_CHUNK elements; whole where one is not contiguous (a
    channels-last conv weight), as an element-wise update may take them in any layout."""
    if not all(t.is_contiguous() for t in tensors):
        return [tensors]
    flat = [t.view(-1) for t in tensors]
    return [tuple(t[start : start + UPDATE_CHUNK] for t in flat) for start in range(0, flat[0].numel(), UPDATE_CHUNK)]


def _update(p, grad, exp_avg, exp_avg_sq, group: dict, step: int, generator: torch.Generator) -> None:
    """Adam's update of (a slice of) one parameter, in float32 from bf16 moments stored back rounded."""
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    # one fp32 moment at a time beside the parameter: the second, turned into the denominator in place
    second = exp_avg_sq.float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_sq.copy_(round_to_bf16_stochastically(second, generator))
    denom = second.sqrt_().div_(math.sqrt(1 - beta2**step)).add_(eps)
    first = exp_avg.float().lerp_(grad, 1 - beta1)
    exp_avg.copy_(round_to_bf16_stochastically(first, generator))
    p.addcdiv_(first, denom, value=-lr / (1 - beta1**step))

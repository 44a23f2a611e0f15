"""Serial bottleneck adapters (Houlsby et al., 2019): the design LoRA is contrasted with.

Source §1 and §5 (the closing table): an Adapter inserts small trainable modules *into* the
network, one after another with the frozen layers, so every forward pass runs them — extra
inference latency that no merge can remove, because the module holds a nonlinearity. LoRA's
bypass B·A is linear and sits *beside* W0, so it merges (source §2.2).

The Houlsby adapter on a d-dimensional hidden state y is

    adapter(y) = y + W_up · σ(W_down · y + b_down) + b_up,
    W_down ∈ ℝ^{m×d}, W_up ∈ ℝ^{d×m}, m ≪ d  (the bottleneck),

with 2·d·m + d + m parameters. Houlsby et al. put one after the attention block's output
projection and one after the feed-forward block's output, before each residual addition: in the
toy transformer, after ``o_proj`` and ``fc2``. :func:`apply_adapters` does exactly that with
:func:`lora_edu.inject.inject_adapters` (everything else frozen), so the adapted layer is
``SerialAdapterLinear(base)``: x ↦ adapter(W0·x + b).

Initialisation ("near-identity", so training starts from the pre-trained function):
``init="houlsby"`` draws both projections from a normal distribution with σ = 10⁻² truncated at
2σ and zeroes the biases, as the paper does; ``init="zero_up"`` draws W_down like ``nn.Linear``
(kaiming-uniform) and sets W_up = 0, so the adapter starts as the exact identity (LoRA's B = 0
trick applied to an adapter). Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for
a wrong type, ``ValueError`` for a wrong value, naming the argument).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lora_edu.checks import check_float, check_instance, check_int, check_one_of, check_seed
from lora_edu.inject import FrozenLinearWrapper, check_layer_input, inject_adapters

__all__ = ["ADAPTER_INITS", "NONLINEARITIES", "HoulsbyAdapter", "SerialAdapterLinear",
           "adapter_params", "apply_adapters", "adapter_layers"]

#: Initialisations of :class:`HoulsbyAdapter` (see the module docstring).
ADAPTER_INITS = ("houlsby", "zero_up")
#: Nonlinearities σ of the bottleneck.
NONLINEARITIES = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


def adapter_params(d: int, bottleneck: int) -> int:
    """Trainable numbers of one adapter on a d-dimensional state: 2·d·m + d + m (m = bottleneck)."""
    d = check_int("d", d, 1)
    m = check_int("bottleneck", bottleneck, 1)
    return 2 * d * m + d + m


class HoulsbyAdapter(nn.Module):
    """y ↦ y + W_up·σ(W_down·y + b_down) + b_up on the last dimension of y (size d).

    The serial Adapter of source §1 and §5 (Houlsby et al. 2019): 2·d·m + d + m parameters
    (:func:`adapter_params`).

    Parameters
    ----------
    d:
        Width of the hidden state, an int ≥ 1.
    bottleneck:
        m, an int with 1 ≤ m ≤ d.
    nonlinearity:
        One of :data:`NONLINEARITIES` (default ``"gelu"``).
    init:
        One of :data:`ADAPTER_INITS` (default ``"houlsby"``).
    init_std:
        σ of the ``"houlsby"`` initialisation, a finite number > 0 (default 10⁻²).
    generator:
        Optional ``torch.Generator`` for the initialisation.
    dtype, device:
        Of the adapter's parameters.
    """

    def __init__(self, d: int, bottleneck: int, nonlinearity: str = "gelu",
                 init: str = "houlsby", init_std: float = 1e-2,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        d = check_int("d", d, 1)
        m = check_int("bottleneck", bottleneck, 1, d)
        nonlinearity = check_one_of("nonlinearity", nonlinearity, NONLINEARITIES)
        init = check_one_of("init", init, ADAPTER_INITS)
        init_std = check_float("init_std", init_std, 0.0, min_inclusive=False)
        if generator is not None:
            check_instance("generator", generator, torch.Generator)
        super().__init__()
        self.d, self.bottleneck = d, m
        self.nonlinearity, self.init = nonlinearity, init
        factory = {"dtype": dtype, "device": device}
        self.down = nn.Parameter(torch.empty(m, d, **factory))       # W_down (m×d)
        self.down_bias = nn.Parameter(torch.zeros(m, **factory))
        self.up = nn.Parameter(torch.zeros(d, m, **factory))         # W_up (d×m)
        self.up_bias = nn.Parameter(torch.zeros(d, **factory))
        with torch.no_grad():
            if init == "houlsby":
                for w in (self.down, self.up):
                    nn.init.trunc_normal_(w, 0.0, init_std, -2 * init_std, 2 * init_std,
                                          generator=generator)
            else:
                bound = 1.0 / math.sqrt(d)           # nn.Linear's kaiming_uniform_(a=√5)
                self.down.uniform_(-bound, bound, generator=generator)

    def forward(self, y: Tensor) -> Tensor:
        """y + W_up·σ(W_down·y + b_down) + b_up; y has last dimension d."""
        if y.shape[-1] != self.d:
            raise ValueError(f"y must have last dimension d={self.d}, got shape {tuple(y.shape)}")
        sigma = NONLINEARITIES[self.nonlinearity]
        return y + F.linear(sigma(F.linear(y, self.down, self.down_bias)), self.up, self.up_bias)

    def extra_repr(self) -> str:
        return (f"d={self.d}, bottleneck={self.bottleneck}, nonlinearity={self.nonlinearity!r}, "
                f"init={self.init!r}")


class SerialAdapterLinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` followed by a :class:`HoulsbyAdapter`: x ↦ adapter(W0·x + b).

    The adapter runs *after* the layer, in series — it cannot be folded into W0, so it costs
    its two small matrix products in every forward pass (source §5: Adapters add inference
    latency). Keyword arguments go to :class:`HoulsbyAdapter`; its width d is the layer's
    ``out_features``.
    """

    def __init__(self, base: nn.Linear, bottleneck: int, **adapter_kwargs: object) -> None:
        check_instance("base", base, nn.Linear)
        w = base.weight
        adapter = HoulsbyAdapter(base.out_features, bottleneck, dtype=w.dtype, device=w.device,
                                 **adapter_kwargs)
        super().__init__(base)
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        """adapter(W0·x + b); ``x`` checked once (:func:`lora_edu.inject.check_layer_input`)."""
        check_layer_input(x, self.in_features, self.base.weight)
        return self.adapter(self.base(x))


def apply_adapters(model: nn.Module, target_modules: str | Sequence[str] = ("o_proj", "fc2"),
                   bottleneck: int = 8, nonlinearity: str = "gelu", init: str = "houlsby",
                   init_std: float = 1e-2, seed: int | None = None) -> nn.Module:
    """Freeze ``model`` and put a Houlsby adapter after each selected ``nn.Linear``, in place.

    The default targets are Houlsby et al.'s placement in the toy transformer: after the
    attention output projection (``o_proj``) and after the feed-forward output (``fc2``) of every
    block. Only the adapters are trainable afterwards (unfreeze a new classifier head yourself, as
    with :func:`lora_edu.lora.apply_lora`). ``seed`` (an int ≥ 0) makes the initialisation
    reproducible with a private generator; nothing global is touched. Returns ``model``.
    Raises ``ValueError`` if no layer matches; the model is unchanged on any error.
    """
    check_instance("model", model, nn.Module)
    # validate every option once, before the model is touched
    bottleneck = check_int("bottleneck", bottleneck, 1)
    check_one_of("nonlinearity", nonlinearity, NONLINEARITIES)
    check_one_of("init", init, ADAPTER_INITS)
    check_float("init_std", init_std, 0.0, min_inclusive=False)
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(check_seed("seed", seed))

    def factory(linear: nn.Linear) -> nn.Module:
        return SerialAdapterLinear(linear, bottleneck, nonlinearity=nonlinearity, init=init,
                                   init_std=init_std, generator=generator)

    inject_adapters(model, target_modules, factory)
    return model


def adapter_layers(model: nn.Module) -> dict[str, SerialAdapterLinear]:
    """The :class:`SerialAdapterLinear` submodules of ``model`` by qualified name."""
    check_instance("model", model, nn.Module)
    return {name: m for name, m in model.named_modules() if isinstance(m, SerialAdapterLinear)}

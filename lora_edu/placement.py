"""Where to put LoRA and which rank: the experiments of source §2.3 on the toy transformer.

Source §2.3 (关键实践) makes three statements: (1) adapt the self-attention matrices
W_q, W_k, W_v, W_o, best W_q + W_v together, and freeze the rest; (2) a small r (1/2/4/8) is
enough, a larger r adds parameters and may even hurt; (3) ΔW learns "hidden features" that
pre-training learned but did not emphasise. They summarise §7 of the LoRA paper (Hu et al.
2021): Table 5 (which matrices, at a fixed budget of trainable parameters), Table 6 (which rank),
Figures 3–4 (subspace similarity of the learned A) and Table 7 (amplification factor).

This module holds what chapter 3 needs to repeat those experiments on a model that trains in
seconds:

* :data:`PLACEMENTS` — the seven placements of Table 5, by name, as ``apply_lora`` targets;
  :data:`FULL_FINE_TUNING` — the name of the reference that trains every weight;
* :func:`rank_for_budget` / :func:`budget_ranks` — the rank each placement gets at a fixed
  budget r·n·L·(d + k) (GPT-3: 18M parameters give 8/8/8/8/4/4/2);
* :func:`adapter_parameter_count` — the adapter's parameters, counted from the model's tensors;
* :func:`finetune` — fine-tune the pre-trained toy model in one configuration (placement, r,
  seed) and return its accuracy (:class:`FinetuneResult`), optionally with the trained A, ΔW
  and the frozen W0 of every adapted layer, for :func:`lora_edu.lowrank.subspace_similarity`
  and :func:`lora_edu.lowrank.amplification_factor`;
* the paper's figures: :data:`PAPER_BUDGET`, :data:`PAPER_TABLE5`, :data:`PAPER_TABLE6`,
  :data:`PAPER_TABLE7`, :data:`PAPER_W_Q_NORM`.

Arguments are checked with :mod:`lora_edu.checks` (``TypeError`` for a wrong type,
``ValueError`` for a wrong value, naming the argument). Nothing here changes global state: the
pre-trained model comes from :func:`lora_edu.toy.pretrained_toy_model` (and its documented
cache), and :func:`lora_edu.toy.train` restores every setting it touches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor, nn

from lora_edu.checks import check_float, check_instance, check_int, check_one_of, check_seed
from lora_edu.lora import INITS, apply_lora, lora_layers
from lora_edu.toy import Task, evaluate, pretrained_toy_model, train

__all__ = [
    "PLACEMENTS",
    "FULL_FINE_TUNING",
    "PAPER_BUDGET",
    "PAPER_TABLE5",
    "PAPER_TABLE6",
    "PAPER_TABLE7",
    "PAPER_W_Q_NORM",
    "rank_for_budget",
    "budget_ranks",
    "adapter_parameter_count",
    "FinetuneResult",
    "finetune",
]

#: The placements of LoRA paper Table 5: name -> the ``nn.Linear`` names ``apply_lora`` targets.
PLACEMENTS: MappingProxyType = MappingProxyType({
    "W_q": ("q_proj",),
    "W_k": ("k_proj",),
    "W_v": ("v_proj",),
    "W_o": ("o_proj",),
    "W_q,W_k": ("q_proj", "k_proj"),
    "W_q,W_v": ("q_proj", "v_proj"),
    "W_q,W_k,W_v,W_o": ("q_proj", "k_proj", "v_proj", "o_proj"),
})

#: The reference configuration of :func:`finetune` that trains every weight (no adapter).
FULL_FINE_TUNING = "full fine-tuning"

#: LoRA paper §7.1: the budget of Table 5 is "18M" trainable parameters on GPT-3 175B
#: (d_model = 12,288, 96 layers): r = 8 on one matrix type, 4 on two, 2 on four — exactly
#: 18,874,368 each.
PAPER_BUDGET = MappingProxyType({"d_model": 12_288, "n_layers": 96, "printed": "18M",
                                 "ranks": MappingProxyType({"W_q": 8, "W_k": 8, "W_v": 8,
                                                            "W_o": 8, "W_q,W_k": 4,
                                                            "W_q,W_v": 4,
                                                            "W_q,W_k,W_v,W_o": 2})})

#: LoRA paper Table 5: validation accuracy (%) of GPT-3 175B at the 18M budget, per placement
#: (WikiSQL ± 0.5 %, MultiNLI ± 0.1 % over seeds, as the paper states).
PAPER_TABLE5 = MappingProxyType({
    "WikiSQL": MappingProxyType({"W_q": 70.4, "W_k": 70.0, "W_v": 73.0, "W_o": 73.2,
                                 "W_q,W_k": 71.4, "W_q,W_v": 73.7, "W_q,W_k,W_v,W_o": 73.7}),
    "MultiNLI": MappingProxyType({"W_q": 91.0, "W_k": 90.8, "W_v": 91.0, "W_o": 91.3,
                                  "W_q,W_k": 91.3, "W_q,W_v": 91.3, "W_q,W_k,W_v,W_o": 91.7}),
})

#: LoRA paper Table 6: validation accuracy (%) of GPT-3 175B for r = 1, 2, 4, 8, 64.
PAPER_TABLE6 = MappingProxyType({
    "WikiSQL": MappingProxyType({
        "W_q": MappingProxyType({1: 68.8, 2: 69.6, 4: 70.5, 8: 70.4, 64: 70.0}),
        "W_q,W_v": MappingProxyType({1: 73.4, 2: 73.3, 4: 73.7, 8: 73.8, 64: 73.5}),
        "W_q,W_k,W_v,W_o": MappingProxyType({1: 74.1, 2: 73.7, 4: 74.0, 8: 74.0, 64: 73.9})}),
    "MultiNLI": MappingProxyType({
        "W_q": MappingProxyType({1: 90.7, 2: 90.9, 4: 91.1, 8: 90.7, 64: 90.7}),
        "W_q,W_v": MappingProxyType({1: 91.3, 2: 91.4, 4: 91.3, 8: 91.6, 64: 91.4}),
        "W_q,W_k,W_v,W_o": MappingProxyType({1: 91.2, 2: 91.7, 4: 91.7, 8: 91.5, 64: 91.4})}),
})

#: LoRA paper Table 7 (W_q of GPT-3's 48th layer): ‖Uᵀ·W_q·V‖_F with U, V the top-r singular
#: vectors of ΔW_q, of W_q itself, or of a random matrix; and ‖ΔW_q‖_F, for r = 4 and r = 64.
PAPER_TABLE7 = MappingProxyType({
    4: MappingProxyType({"delta_w": 0.32, "w": 21.67, "random": 0.02, "delta_w_norm": 6.91}),
    64: MappingProxyType({"delta_w": 1.90, "w": 37.71, "random": 0.33, "delta_w_norm": 3.57}),
})

#: LoRA paper Table 7: ‖W_q‖_F of GPT-3's 48th layer.
PAPER_W_Q_NORM = 61.95



def _check_placement(placement: object, allow_full: bool = False) -> str:
    options = tuple(PLACEMENTS) + ((FULL_FINE_TUNING,) if allow_full else ())
    return check_one_of("placement", placement, options)


def rank_for_budget(budget: int, n_matrices: int, d: int, k: int, n_layers: int = 1) -> int:
    """The largest r with r·n_matrices·n_layers·(d + k) ≤ ``budget``.

    LoRA on one d×k matrix trains r·(d + k) numbers (source §2.1 (3)); on ``n_matrices`` such
    matrices in each of ``n_layers`` layers, r·n·L·(d + k). At a fixed budget, spreading LoRA over
    more matrices leaves each a smaller rank (source §2.3 (1), LoRA paper §7.1: 18M parameters on
    GPT-3 give r = 8 for one matrix type, 4 for two, 2 for four). The count equals the budget
    exactly when it is a multiple of n·L·(d + k).

    All arguments are ints (Python or numpy) ≥ 1. ``ValueError`` naming ``budget`` if it does not
    buy r = 1, or if the rank would exceed min(d, k) (a rank-r product of a d×k matrix cannot
    have a larger rank).
    """
    budget = check_int("budget", budget, 1)
    n_matrices = check_int("n_matrices", n_matrices, 1)
    d = check_int("d", d, 1)
    k = check_int("k", k, 1)
    n_layers = check_int("n_layers", n_layers, 1)
    per_rank = n_matrices * n_layers * (d + k)
    r = budget // per_rank
    if r < 1:
        raise ValueError(f"budget must be >= {per_rank} (rank 1 on {n_matrices} matrices × "
                         f"{n_layers} layers of {d}×{k}), got {budget}")
    if r > min(d, k):
        raise ValueError(f"budget must be <= {min(d, k) * per_rank} (rank min(d, k) = "
                         f"{min(d, k)} everywhere), got {budget}")
    return r


def budget_ranks(budget: int, d: int, k: int, n_layers: int = 1) -> dict[str, int]:
    """The rank of each placement of :data:`PLACEMENTS` at a fixed parameter ``budget``.

    :func:`rank_for_budget` with n_matrices = the number of matrices the placement adapts, for
    square or rectangular d×k attention projections in ``n_layers`` layers (source §2.3 (1);
    LoRA paper Table 5: 8/8/8/8/4/4/2 on GPT-3). Arguments as in :func:`rank_for_budget`.
    """
    return {name: rank_for_budget(budget, len(targets), d, k, n_layers)
            for name, targets in PLACEMENTS.items()}


def adapter_parameter_count(model: nn.Module) -> int:
    """Number of LoRA numbers in ``model``: Σ over its LoRA layers of numel(A) + numel(B).

    Counted from the tensors themselves (``lora_A`` r×k and ``lora_B`` d×r of every
    :class:`lora_edu.lora.LoRALinear`), so it checks a formula such as r·(d + k) per matrix
    (source §2.1 (3)) rather than repeating it; a new classifier head is not included. 0 for a
    model without LoRA layers. ``model`` must be an ``nn.Module``.
    """
    check_instance("model", model, nn.Module)
    return sum(layer.lora_A.numel() + layer.lora_B.numel()
               for layer in lora_layers(model).values())


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` measured for one (placement, r, seed) configuration.

    ``test_accuracy`` is the held-out accuracy on the task's test split; ``val_accuracy`` the
    accuracy on the validation rows held back from the training split (``None`` without them):
    choose settings by it, report ``test_accuracy``. ``adapter_params`` counts the LoRA numbers
    (:func:`adapter_parameter_count`; for full fine-tuning, every weight), ``trainable`` every
    trainable number including the new head. ``layers`` maps each adapted layer's name to
    ``{"A": A (r×k), "delta_w": s·B·A (d×k), "w0": the frozen W0 (d×k)}`` (numpy arrays in the
    model's dtype, source §2.1 notation) when ``keep_weights=True``, else it is empty.
    """

    placement: str
    r: int | None
    seed: int
    alpha: float | None
    lr: float
    steps: int
    test_accuracy: float
    val_accuracy: float | None
    adapter_params: int
    trainable: int
    layers: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _split(task: Task, n_val: int) -> Task:
    """The task to train on: the training split without its last ``n_val`` rows, which become
    its "test" split (the validation set ``train`` evaluates)."""
    if n_val == 0:
        return task
    n_train = task.x_train.shape[0]
    if n_val >= n_train:
        raise ValueError(f"n_val must be < the number of training rows ({n_train}), got {n_val}")
    cut = n_train - n_val
    return Task(task.x_train[:cut], task.y_train[:cut], task.x_train[cut:], task.y_train[cut:],
                task.n_classes, f"{task.name} (validation)")


def finetune(placement: str, r: int | None, seed: int, *, task: Task, alpha: float | None = None,
             lr: float = 1e-2, steps: int = 100, batch_size: int = 32, n_val: int = 0,
             rslora: bool = False, init: str = "kaiming", pretrained_seed: int = 0,
             pretrain_steps: int = 200, keep_weights: bool = False) -> FinetuneResult:
    """Fine-tune the pre-trained toy transformer in one configuration; return its accuracy.

    The body is :func:`lora_edu.toy.pretrained_toy_model` (``pretrained_seed``,
    ``pretrain_steps``), the same for every configuration. For a placement of
    :data:`PLACEMENTS`, LoRA of rank ``r`` goes on those matrices of every layer
    (``apply_lora``: W0 frozen, h = W0·x + s·B·A·x with s = α/r, or α/√r with ``rslora``;
    source §2.1, §2.3 (1)); for :data:`FULL_FINE_TUNING` (``r=None``, ``alpha=None``) every
    weight trains. Either way a fresh classifier head is trained with it.
    Then ``steps`` AdamW steps of ``batch_size`` examples at learning rate ``lr``
    (:func:`lora_edu.toy.train`).

    ``seed`` draws A's initialisation, the new head and the batch order, so the result is a
    deterministic function of the arguments (on one machine: another CPU's kernels can move the
    last bits). With ``n_val > 0`` the last ``n_val`` training rows are held back as a
    validation set and not trained on.

    Parameters
    ----------
    placement:
        A key of :data:`PLACEMENTS` or :data:`FULL_FINE_TUNING`.
    r:
        LoRA rank, an int in 1 … min(d, k); ``None`` for full fine-tuning.
    seed, pretrained_seed:
        Ints in [0, 2**32 − 1].
    pretrain_steps:
        Pre-training steps of the body (int ≥ 0; 200, the book's pre-trained model, by default).
    task:
        A :class:`lora_edu.toy.Task` the toy model can read (e.g. ``downstream_task()``).
    alpha:
        The numerator of s (> 0); default r (s = 1, or √r with ``rslora``); ``None`` for full
        fine-tuning.
    lr, steps, batch_size:
        As in :func:`lora_edu.toy.train` (> 0, int ≥ 1, int ≥ 1).
    n_val:
        Validation rows held back from the training split, an int in 0 … n_train − 1.
    rslora, init:
        s = α/√r instead of α/r; A's initialisation, one of ``lora_edu.lora.INITS`` (default
        ``"kaiming"``, as in ``loralib`` and PEFT).
    keep_weights:
        Also return A, s·B·A and W0 of every adapted layer (:attr:`FinetuneResult.layers`).
    """
    placement = _check_placement(placement, allow_full=True)
    full = placement == FULL_FINE_TUNING
    if full:
        if r is not None:
            raise ValueError(f"r must be None for {FULL_FINE_TUNING!r}, got {r!r}")
        if alpha is not None:
            raise ValueError(f"alpha must be None for {FULL_FINE_TUNING!r}, got {alpha!r}")
    else:
        r = check_int("r", r, 1)
        alpha = float(r) if alpha is None else check_float("alpha", alpha, 0.0,
                                                            min_inclusive=False)
    seed = check_seed("seed", seed)
    check_instance("task", task, Task)
    lr = check_float("lr", lr, 0.0, min_inclusive=False)
    steps = check_int("steps", steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    n_val = check_int("n_val", n_val, 0)
    check_instance("rslora", rslora, bool)
    init = check_one_of("init", init, INITS)
    pretrained_seed = check_seed("pretrained_seed", pretrained_seed)
    pretrain_steps = check_int("pretrain_steps", pretrain_steps, 0)
    check_instance("keep_weights", keep_weights, bool)
    fit = _split(task, n_val)

    model, _ = pretrained_toy_model(seed=pretrained_seed, steps=pretrain_steps)
    if not full:
        apply_lora(model, PLACEMENTS[placement], r=r, alpha=alpha, init=init, rslora=rslora,
                   seed=seed)
    model.reset_head(n_classes=task.n_classes, seed=seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapter = (trainable - sum(p.numel() for p in model.head.parameters()) if full
               else adapter_parameter_count(model))
    history = train(model, fit, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                    eval_every=0)
    if n_val:
        val_accuracy: float | None = history.final_accuracy
        test_accuracy = evaluate(model, task)
    else:
        val_accuracy, test_accuracy = None, history.final_accuracy
    layers: dict[str, dict[str, np.ndarray]] = {}
    if keep_weights and not full:
        with torch.no_grad():
            for name, layer in lora_layers(model).items():
                layers[name] = {"A": _array(layer.lora_A), "delta_w": _array(layer.delta_weight()),
                                "w0": _array(layer.base.weight)}
    return FinetuneResult(placement=placement, r=r, seed=seed, alpha=alpha, lr=lr, steps=steps,
                          test_accuracy=test_accuracy, val_accuracy=val_accuracy,
                          adapter_params=adapter, trainable=trainable, layers=layers)


def _array(t: Tensor) -> np.ndarray:
    # kept in the model's dtype: the rank of s·B·A is judged at the precision it was computed in
    return t.detach().cpu().numpy().copy()

"""Fine-tuning a real pretrained network on real text: MiniLM-L6 on WordNet's noun supersenses.

The set-up of chapter 9. Ten noun supersenses (``noun.act``, ``noun.animal``, …;
:func:`lora_edu.wordnet.wordnet_supersenses`, 280/60/60 train/validation/test texts per class,
``"lemma: definition"``) are classified by a new linear head on the mean-pooled hidden states of
all-MiniLM-L6-v2 (:mod:`lora_edu.encoder`, the real weights):

.. math::

    \\text{logits} = W_h\\,\\mathrm{mean\\_pool}\\big(\\mathrm{encoder}(x)\\big) + b_h .

Every method freezes the embeddings and the (unused) pooler and trains the head; they differ in
what else they train (:data:`METHODS`):

==========  ===========================================================================
frozen      nothing else: the floor (a linear probe of the pretrained sentence embedding)
full        every weight of the 6 encoder layers (full fine-tuning)
lora_qv     LoRA on W_q, W_v of the 6 layers (source §2.3 (1)), r = 8, s = α/r = 2
lora_all    LoRA on all 36 linear layers at a similar budget (r = 2)
qlora_qv    the same LoRA on W_q, W_v over an NF4 + double-quantized base (source §4)
adalora     AdaLoRA on the 36 matrices, pruned by the cubic schedule to LoRA W_q, W_v's
            budget (96 triplets = 8 × 12; source §3)
adapters    Houlsby adapters (bottleneck 8) after ``attention.output.dense`` and the FFN's
            ``output.dense`` of every layer (6 + 6; source §5)
==========  ===========================================================================

The protocol (:func:`run_experiment`): each method's learning rate is chosen from a small grid
on the **validation** split with the first seed; the chosen setting runs on every seed and is
scored on **test**; results are ``mean ± std [min, max]`` (:class:`lora_edu.toy.SeedStats`) and
"A beats B" only through :func:`lora_edu.toy.compare_seeds`. Alongside: trainable parameters,
training-state bytes, seconds per step (shown, never compared), the effective rank of the real
ΔW of full fine-tuning against a Gaussian matrix (source §2.1's low intrinsic rank), the
subspace similarity of LoRA r = 4 and r = 16 (source §2.3 (2)) and AdaLoRA's final allocation.

What is here: :class:`TokenizedSplit`, :func:`tokenize_split`, :func:`supersense_splits`,
:func:`length_batches`; :class:`SupersenseClassifier`, :func:`build_model`;
:func:`train_classifier`, :func:`evaluate_accuracy`; :func:`trainable_parameters`,
:func:`training_state_bytes`; :func:`delta_w_ranks`, :func:`lora_subspace_similarity`,
:func:`allocation_table`; :class:`RunConfig`, :data:`FULL`, :func:`run_one`,
:func:`run_experiment`.
"""

from __future__ import annotations

import datetime as _dt
import math
import multiprocessing as mp
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lora_edu.adalora import (
    RankAllocator,
    apply_adalora,
    budget_from_average_rank,
    orthogonal_penalty,
)
from lora_edu.adapter import apply_adapters
from lora_edu.checks import (
    check_float,
    check_instance,
    check_int,
    check_one_of,
    check_seed,
    check_tensor,
)
from lora_edu.encoder import (
    MiniLMEncoder,
    mean_pool,
    minilm_encoder,
    minilm_tokenizer,
    tokenize_texts,
)
from lora_edu.inject import count_parameters
from lora_edu.lora import apply_lora, lora_layers
from lora_edu.lowrank import effective_rank, singular_values, subspace_similarity_grid
from lora_edu.qlora import prepare_qlora, storage_report
from lora_edu.toy import SeedStats, compare_seeds
from lora_edu.wordnet import wordnet_supersenses

__all__ = [
    "METHODS", "ALL_LINEAR", "QV", "ADAPTER_TARGETS", "MATRIX_KINDS", "RunConfig", "FULL",
    "TokenizedSplit", "tokenize_split", "supersense_splits", "length_batches",
    "SupersenseClassifier", "build_model", "trainable_parameters", "training_state_bytes",
    "TrainResult", "train_classifier", "evaluate_accuracy", "pooled_features",
    "fit_linear_probe", "encoder_matrices", "delta_w_ranks",
    "lora_subspace_similarity", "allocation_table", "run_one", "run_experiment",
]

#: The methods, in the order of the chapter's table.
METHODS = ("frozen", "full", "lora_qv", "lora_all", "qlora_qv", "adalora", "adapters")
#: BertModel's names of the 6 linear layers of an encoder layer (× 6 layers = 36 matrices).
#: The suffix "output.dense" alone selects both ``attention.output.dense`` and the FFN's
#: ``output.dense``; ``pooler.dense`` is never selected.
ALL_LINEAR = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
              "output.dense")
#: W_q and W_v (source §2.3 (1)).
QV = ("query", "value")
#: Houlsby's placement: after the attention output projection and after the FFN output (the
#: suffix matches both, 6 + 6 layers).
ADAPTER_TARGETS = ("output.dense",)
#: Short names of the 6 matrix types of a layer, by their BertModel path inside the layer.
MATRIX_KINDS = {"attention.self.query": "W_q", "attention.self.key": "W_k",
                "attention.self.value": "W_v", "attention.output.dense": "W_o",
                "intermediate.dense": "W_1 (FFN in)", "output.dense": "W_2 (FFN out)"}
#: Adam keeps two moments per trainable number; its gradient is one more copy.
_ADAM_COPIES = 4
_LAYERS = 6


@dataclass(frozen=True)
class RunConfig:
    """One version of the experiment (:data:`FULL`, or a reduced one made with
    ``dataclasses.replace``).

    ``steps``: optimizer steps per run, on batches of ``batch_size`` texts of at most
    ``max_length`` tokens; ``grids``: the learning rates tried per method on validation (the
    encoder-side rate; the head's is ``head_lr``, except for ``frozen``, whose grid is the head's
    rate); ``seeds``: the test seeds (the grid runs with ``seeds[0]``). ``r``: LoRA's rank on
    W_q, W_v (α = 2r, so s = 2); ``r_all``: its rank on all 36 matrices; ``adalora_init_r``: the
    rank AdaLoRA starts from on the 36, pruned to ``r`` × 12 triplets, warm-up and final phase
    ``t_init_frac``, ``t_final_frac`` of the steps; ``adapter_bottleneck``: the adapters'
    width; ``dropout``: the encoder's dropout while training; ``margin``: of
    :func:`~lora_edu.toy.compare_seeds`; ``analysis``: also the ΔW ranks and the r = 4 / 16
    subspace runs.
    """

    name: str
    methods: tuple[str, ...]
    steps: int
    seeds: tuple[int, ...]
    grids: Mapping[str, tuple[float, ...]]
    batch_size: int = 32
    max_length: int = 32
    head_lr: float = 1e-2
    r: int = 8
    r_all: int = 2
    adapter_bottleneck: int = 8
    adalora_init_r: int = 4
    t_init_frac: float = 0.1
    t_final_frac: float = 0.2
    dropout: float = 0.1
    margin: float = 0.01
    analysis: bool = True

    def __post_init__(self) -> None:
        check_instance("name", self.name, str)
        check_instance("methods", self.methods, tuple)
        if not self.methods:
            raise ValueError("methods must name at least one method")
        for m in self.methods:
            check_one_of("methods", m, METHODS)
        check_int("steps", self.steps, 1)
        check_instance("seeds", self.seeds, tuple)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        for s in self.seeds:
            check_seed("seeds", s)
        check_instance("grids", self.grids, Mapping)
        for m in self.methods:
            if not self.grids.get(m):
                raise ValueError(f"grids must give at least one learning rate for {m!r}")
            for lr in self.grids[m]:
                check_float("grids", lr, 0.0, min_inclusive=False)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_length", self.max_length, 3, 512)
        check_float("head_lr", self.head_lr, 0.0, min_inclusive=False)
        for name in ("r", "r_all", "adapter_bottleneck", "adalora_init_r"):
            check_int(name, getattr(self, name), 1)
        check_float("t_init_frac", self.t_init_frac, 0.0, 1.0, min_inclusive=False)
        check_float("t_final_frac", self.t_final_frac, 0.0, 1.0, min_inclusive=False)
        if self.t_init_frac + self.t_final_frac >= 1:
            raise ValueError("t_init_frac + t_final_frac must be below 1")
        check_float("dropout", self.dropout, 0.0, 1.0, max_inclusive=False)
        check_float("margin", self.margin, 0.0)
        check_instance("analysis", self.analysis, bool)


#: The chapter's full experiment: every method, 176 steps of 32 texts (two passes over the 2,800
#: training texts), three seeds, three learning rates per method.
FULL = RunConfig(
    "full", METHODS, steps=176, seeds=(0, 1, 2),
    grids={"frozen": (3e-3, 1e-2, 3e-2), "full": (3e-5, 1e-4, 3e-4),
           "lora_qv": (1e-3, 3e-3, 1e-2), "lora_all": (1e-3, 3e-3, 1e-2),
           "qlora_qv": (1e-3, 3e-3, 1e-2), "adalora": (3e-3, 1e-2, 3e-2),
           "adapters": (1e-3, 3e-3, 1e-2)})


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class TokenizedSplit:
    """A split tokenized once: ``ids``, ``mask`` (n, L) int64, right-padded to the longest
    text; ``lengths`` (n,) real tokens per text; ``labels`` (n,) class indices."""

    ids: Tensor
    mask: Tensor
    lengths: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The rows ``index`` (a 1-D int tensor), cut to their longest text:
        ``(ids, mask, labels)``."""
        check_tensor("index", index, 1)
        if index.numel() == 0:
            raise ValueError("index must select at least one row")
        width = int(self.lengths[index].max())
        return self.ids[index, :width], self.mask[index, :width], self.labels[index]


def tokenize_split(pairs: Sequence[tuple[str, int]], max_length: int = 32) -> TokenizedSplit:
    """Tokenize ``(text, label)`` pairs once with :func:`~lora_edu.encoder.minilm_tokenizer`
    (each text truncated to ``max_length`` tokens, an int in [3, 512])."""
    check_instance("pairs", pairs, (list, tuple))
    if not pairs:
        raise ValueError("pairs must hold at least one (text, label) pair")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], int)):
            raise TypeError(f"pairs must hold (str, int) tuples, got {pair!r} at index {i}")
    ids, mask = tokenize_texts(minilm_tokenizer(max_length), [t for t, _ in pairs])
    return TokenizedSplit(ids, mask, mask.sum(dim=1), torch.tensor([y for _, y in pairs]))


def supersense_splits(max_length: int = 32) -> dict[str, TokenizedSplit]:
    """The task's ``"train"``, ``"validation"`` and ``"test"`` splits
    (:func:`~lora_edu.wordnet.wordnet_supersenses`), tokenized (:func:`tokenize_split`)."""
    data = wordnet_supersenses()
    return {s: tokenize_split(getattr(data, s), max_length)
            for s in ("train", "validation", "test")}


def length_batches(split: TokenizedSplit, batch_size: int, steps: int, seed: int,
                   pool: int = 8) -> list[Tensor]:
    """``steps`` batches of row indices over epochs of ``split``.

    Each epoch is a fresh permutation (from a generator seeded with ``seed``), cut into pools of
    ``pool`` batches; each pool is sorted by length, so a batch holds texts of similar length
    and little padding; then the batches of the epoch are shuffled. Every text appears once per
    epoch. ``batch_size``, ``steps``, ``pool``: ints ≥ 1.
    """
    check_instance("split", split, TokenizedSplit)
    batch_size = check_int("batch_size", batch_size, 1)
    steps = check_int("steps", steps, 1)
    seed = check_seed("seed", seed)
    pool = check_int("pool", pool, 1)
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    n = len(split)
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        epoch = []
        for start in range(0, n, batch_size * pool):
            chunk = perm[start:start + batch_size * pool]
            chunk = chunk[torch.argsort(split.lengths[chunk], stable=True)]
            epoch.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        order = torch.randperm(len(epoch), generator=g)
        out.extend(epoch[int(i)] for i in order)
    return out[:steps]


# --------------------------------------------------------------------------- models

class SupersenseClassifier(nn.Module):
    """logits = W_h · mean_pool(encoder(x)) + b_h: a new linear head on the sentence embedding.

    ``bert`` is the (adapted) :class:`~lora_edu.encoder.MiniLMEncoder`, whose module names stay
    those of ``transformers``' ``BertModel`` (so an adapter exported from ``model.bert`` loads on
    ``BertModel``); ``head`` is ``nn.Linear(hidden, n_classes)``.
    """

    def __init__(self, encoder: nn.Module, n_classes: int, hidden: int = 384) -> None:
        super().__init__()
        check_instance("encoder", encoder, nn.Module)
        self.bert = encoder
        self.head = nn.Linear(check_int("hidden", hidden, 1), check_int("n_classes", n_classes, 2))

    def pooled(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The mean-pooled last hidden states, (batch, hidden)."""
        return mean_pool(self.bert(ids, mask), mask)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.pooled(ids, mask))


def build_model(method: str, seed: int, cfg: RunConfig = FULL, n_classes: int = 10,
                r: int | None = None, encoder: MiniLMEncoder | None = None
                ) -> SupersenseClassifier:
    """The classifier of ``method`` (one of :data:`METHODS`) with its trainable parts set.

    Embeddings and pooler are frozen for every method; the head is drawn from a generator seeded
    with ``seed`` (PyTorch's default ``nn.Linear`` law for the weight, bias 0) and always
    trainable; adapters are initialised from ``seed`` too. ``r`` overrides LoRA's rank of
    ``lora_qv`` (α = 2r). ``encoder``: the pretrained encoder to adapt (default: a fresh
    :func:`~lora_edu.encoder.minilm_encoder` with ``cfg.dropout``).
    """
    check_one_of("method", method, METHODS)
    seed = check_seed("seed", seed)
    check_instance("cfg", cfg, RunConfig)
    if r is not None:
        r = check_int("r", r, 1)
    if encoder is not None:
        check_instance("encoder", encoder, MiniLMEncoder)
    enc = encoder if encoder is not None else minilm_encoder(dropout=cfg.dropout)
    if method in ("frozen", "full"):
        enc.requires_grad_(method == "full")
    elif method == "lora_qv":
        rank = cfg.r if r is None else r
        apply_lora(enc, QV, r=rank, alpha=2.0 * rank, init="kaiming", seed=seed)
    elif method == "lora_all":
        apply_lora(enc, ALL_LINEAR, r=cfg.r_all, alpha=2.0 * cfg.r_all, init="kaiming",
                   seed=seed)
    elif method == "qlora_qv":
        others = tuple(n for n in ALL_LINEAR if n not in QV)
        prepare_qlora(enc, QV, r=cfg.r, alpha=2.0 * cfg.r, init="kaiming", seed=seed,
                      compute_dtype=torch.float32, quantize_only=others)
    elif method == "adalora":
        apply_adalora(enc, ALL_LINEAR, r=cfg.adalora_init_r, alpha=2.0 * cfg.adalora_init_r,
                      seed=seed)
    else:
        apply_adapters(enc, ADAPTER_TARGETS, bottleneck=cfg.adapter_bottleneck, seed=seed)
    enc.embeddings.requires_grad_(False)
    enc.pooler.requires_grad_(False)
    model = SupersenseClassifier(enc, check_int("n_classes", n_classes, 2))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(model.head.in_features)
        model.head.weight.uniform_(-bound, bound, generator=g)
        model.head.bias.zero_()
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Numbers that receive gradient updates (:func:`lora_edu.inject.count_parameters`)."""
    return count_parameters(check_instance("model", model, nn.Module))[0]


def training_state_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes a training step holds besides activations: ``"stored"``, every tensor as stored
    (parameters and buffers, NF4 codes and constants included, each once;
    :func:`lora_edu.qlora.storage_report`); ``"grads_and_adam"``, per trainable number its
    gradient and Adam's two moments (same dtype as the parameter); ``"total"``, their sum."""
    report = storage_report(check_instance("model", model, nn.Module))
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    extra = (_ADAM_COPIES - 1) * trainable
    return {"stored": report.total, "grads_and_adam": extra, "total": report.total + extra}


# --------------------------------------------------------------------------- train / evaluate

@dataclass
class TrainResult:
    """What :func:`train_classifier` returns: the loss of each step, the median seconds per
    step, and the AdaLoRA allocator's final ranks by layer name (empty for other methods)."""

    losses: list[float]
    seconds_per_step: float
    ranks: dict[str, int] = field(default_factory=dict)


def _optimizer(model: SupersenseClassifier, method: str, lr: float, head_lr: float
               ) -> torch.optim.Optimizer:
    head = list(model.head.parameters())
    if method == "frozen":
        return torch.optim.Adam(head, lr=lr)
    body = [p for p in model.bert.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}])


def train_classifier(model: SupersenseClassifier, method: str, split: TokenizedSplit,
                     steps: int, lr: float, seed: int, cfg: RunConfig = FULL,
                     stop_after: int | None = None) -> TrainResult:
    """Fine-tune ``model`` (built by :func:`build_model` for ``method``) on ``split``.

    Adam (learning rate ``lr`` for the adapted encoder weights, ``cfg.head_lr`` for the head;
    ``frozen`` trains only the head, at ``lr``), a linear warm-up over the first 10 % of the steps
    and a linear decay to 0, cross-entropy loss, ``steps`` batches of :func:`length_batches`
    seeded with ``seed``; dropout is on while training and draws from torch's global generator,
    seeded here with ``seed``. AdaLoRA adds the orthogonality penalty R(P, Q) with γ = 0.1
    (source §3.2 (1)) and steps a :class:`~lora_edu.adalora.RankAllocator` between backward and
    the optimizer step (cubic schedule, from all triplets down to ``cfg.r`` × 12); its final
    pattern is applied at the end. ``stop_after``: run only the first ``stop_after`` of the
    ``steps`` steps (same batches and schedule; for checking a stored run's first losses).
    Returns a :class:`TrainResult`; the model is left in eval mode.
    """
    check_instance("model", model, SupersenseClassifier)
    check_one_of("method", method, METHODS)
    check_instance("split", split, TokenizedSplit)
    steps = check_int("steps", steps, 1)
    lr = check_float("lr", lr, 0.0, min_inclusive=False)
    seed = check_seed("seed", seed)
    check_instance("cfg", cfg, RunConfig)
    last = steps if stop_after is None else check_int("stop_after", stop_after, 1, steps)
    torch.manual_seed(seed)
    opt = _optimizer(model, method, lr, cfg.head_lr)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min((t + 1) / warm, max(0.0, (steps - t) / max(1, steps - warm))))
    allocator = None
    if method == "adalora":
        allocator = RankAllocator(model, target_budget=budget_from_average_rank(cfg.r, 2 * _LAYERS),
                                  total_steps=steps, t_init=max(1, int(cfg.t_init_frac * steps)),
                                  t_final=max(1, int(cfg.t_final_frac * steps)))
    model.train()
    losses, times = [], []
    for step, index in enumerate(length_batches(split, cfg.batch_size, steps, seed)[:last],
                                 start=1):
        t0 = time.perf_counter()
        ids, mask, y = split.batch(index)
        loss = nn.functional.cross_entropy(model(ids, mask), y)
        total = loss + orthogonal_penalty(model, 0.1) if allocator is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if allocator is not None:
            allocator.step(step)
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    model.eval()
    ranks: dict[str, int] = {}
    if allocator is not None:
        allocator.apply_masks()
        ranks = {n: int(v) for n, v in allocator.ranks().items()}
        allocator.remove_hooks()
    return TrainResult(losses, float(np.median(times)), ranks)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: TokenizedSplit, batch_size: int = 128) -> float:
    """Accuracy of ``model`` (called as ``model(ids, mask)``, eval mode) on ``split``: the
    fraction of texts whose largest logit is the label (texts sorted by length, batches of
    ``batch_size``)."""
    check_instance("model", model, nn.Module)
    check_instance("split", split, TokenizedSplit)
    batch_size = check_int("batch_size", batch_size, 1)
    model.eval()
    order = torch.argsort(split.lengths, stable=True)
    correct = 0
    for i in range(0, len(split), batch_size):
        ids, mask, y = split.batch(order[i:i + batch_size])
        correct += int((model(ids, mask).argmax(dim=-1) == y).sum())
    return correct / len(split)


# --------------------------------------------------------------------------- the linear probe

@torch.no_grad()
def pooled_features(encoder: nn.Module, split: TokenizedSplit, batch_size: int = 128) -> Tensor:
    """The sentence embedding of every text of ``split``, in order: mean-pooled last hidden
    states of ``encoder`` (eval mode, no dropout), shape (n, hidden), float64."""
    check_instance("encoder", encoder, nn.Module)
    check_instance("split", split, TokenizedSplit)
    batch_size = check_int("batch_size", batch_size, 1)
    encoder.eval()
    out = []
    for i in range(0, len(split), batch_size):
        ids, mask, _ = split.batch(torch.arange(i, min(i + batch_size, len(split))))
        out.append(mean_pool(encoder(ids, mask), mask).double())
    return torch.cat(out)


def fit_linear_probe(features: Tensor, labels: Tensor, n_classes: int, weight_decay: float,
                     max_iter: int = 500) -> tuple[Tensor, Tensor]:
    """A linear classifier on frozen features, fitted to convergence: multinomial logistic
    regression, min over W, b of (1/n)·Σ_i CE(W·x_i + b, y_i) + weight_decay·‖W‖_F²,

    by L-BFGS (strong Wolfe line search) in float64 from W = 0, b = 0. The objective is convex
    (strictly in W for ``weight_decay`` > 0), so the result depends on no seed. The best a new
    head can do on the frozen network: the floor of fine-tuning at its best.

    ``features`` (n, k) floating, ``labels`` (n,) ints in [0, ``n_classes``), ``weight_decay`` a
    real ≥ 0, ``max_iter`` an int ≥ 1. Returns ``(W, b)``: (n_classes, k) and (n_classes,).
    """
    check_tensor("features", features, 2, floating=True)
    check_tensor("labels", labels, 1)
    n_classes = check_int("n_classes", n_classes, 2)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must have one entry per row of features "
                         f"({features.shape[0]}), got {labels.shape[0]}")
    if labels.is_floating_point() or labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be ints in [0, {n_classes})")
    weight_decay = check_float("weight_decay", weight_decay, 0.0)
    max_iter = check_int("max_iter", max_iter, 1)
    x, y = features.double(), labels.long()
    W = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ W.T + b, y) + weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(objective)
    return W.detach(), b.detach()


# --------------------------------------------------------------------------- analyses

def encoder_matrices(encoder: nn.Module) -> dict[str, Tensor]:
    """Copies of the 36 weight matrices W of the encoder layers (plain ``nn.Linear``), by name."""
    check_instance("encoder", encoder, nn.Module)
    return {n: m.weight.detach().clone() for n, m in encoder.named_modules()
            if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")}


def delta_w_ranks(w0: Mapping[str, Tensor], w1: Mapping[str, Tensor], energy: float = 0.9,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per matrix, the rank of a real update ΔW = W1 − W0 (source §2.1: ΔW has a low intrinsic
    rank): ``"effective_rank"`` (:func:`lora_edu.lowrank.effective_rank` at ``energy``) of ΔW,
    ``"random_effective_rank"`` of a Gaussian matrix of the same shape (drawn from ``seed``),
    ``"full_rank"`` min(d, k), ``"shape"`` and ``"relative_norm"`` ‖ΔW‖_F / ‖W0‖_F.
    ``w0``, ``w1``: mappings with the same names to 2-D tensors of equal shapes."""
    check_instance("w0", w0, Mapping)
    check_instance("w1", w1, Mapping)
    if set(w0) != set(w1) or not w0:
        raise ValueError("w0 and w1 must name the same, non-empty set of matrices")
    energy = check_float("energy", energy, 0.0, 1.0, min_inclusive=False)
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    out = {}
    for name in sorted(w0):
        check_tensor(f"w0[{name!r}]", w0[name], 2, floating=True)
        check_tensor(f"w1[{name!r}]", w1[name], 2, floating=True)
        if w0[name].shape != w1[name].shape:
            raise ValueError(f"w1[{name!r}] must have the shape of w0[{name!r}]")
        dw = (w1[name] - w0[name]).to(torch.float64)
        noise = torch.randn(dw.shape, generator=g, dtype=torch.float64)
        out[name] = {
            "shape": list(dw.shape),
            "effective_rank": effective_rank(singular_values(dw), energy),
            "random_effective_rank": effective_rank(singular_values(noise), energy),
            "full_rank": min(dw.shape),
            "relative_norm": float(torch.linalg.matrix_norm(dw)
                                   / torch.linalg.matrix_norm(w0[name].double())),
        }
    return out


def lora_subspace_similarity(a_small: Mapping[str, Tensor], a_large: Mapping[str, Tensor]
                             ) -> dict[str, list[list[float]]]:
    """For each adapted layer, the grid φ(A_small, A_large, i, j) (LoRA paper §7.2, eq. 4;
    :func:`lora_edu.lowrank.subspace_similarity_grid`). ``a_*`` map the same layer names to the
    trained A (r × k) of two LoRA runs with different ranks."""
    check_instance("a_small", a_small, Mapping)
    check_instance("a_large", a_large, Mapping)
    if set(a_small) != set(a_large) or not a_small:
        raise ValueError("a_small and a_large must name the same, non-empty set of layers")
    return {n: subspace_similarity_grid(a_small[n], a_large[n]).tolist() for n in sorted(a_small)}


def allocation_table(ranks: Mapping[str, int]) -> dict[str, list[int]]:
    """AdaLoRA's final ranks as ``{matrix type: [rank in layer 0, …, layer 5]}``, the types
    named as in :data:`MATRIX_KINDS`; ``ranks`` maps layer names (``…encoder.layer.i.<path>``)
    to ranks."""
    check_instance("ranks", ranks, Mapping)
    table: dict[str, list[int]] = {k: [0] * _LAYERS for k in MATRIX_KINDS.values()}
    for name, r in ranks.items():
        parts = name.split(".")
        if "layer" not in parts:
            raise ValueError(f"ranks must be keyed by encoder layer names, got {name!r}")
        i = parts.index("layer")
        rest = ".".join(parts[i + 2:])
        if rest not in MATRIX_KINDS:
            raise ValueError(f"ranks names an unknown matrix {name!r}")
        table[MATRIX_KINDS[rest]][int(parts[i + 1])] = check_int("ranks", r, 0)
    return table


# --------------------------------------------------------------------------- one run

_SPLITS: dict[int, dict[str, TokenizedSplit]] = {}


def _splits(max_length: int) -> dict[str, TokenizedSplit]:
    if max_length not in _SPLITS:
        _SPLITS[max_length] = supersense_splits(max_length)
    return _SPLITS[max_length]


def run_one(job: Mapping[str, Any]) -> dict[str, Any]:
    """One training run, described by ``job``: ``method``, ``lr``, ``seed``, ``config`` (a
    :class:`RunConfig`), ``score`` (the splits to score), and optional flags: ``r`` (LoRA rank
    of ``lora_qv``), ``delta_w`` (add :func:`delta_w_ranks` of the run), ``lora_A`` (add the
    trained A of every LoRA layer), ``state`` (add the trainable tensors). Returns plain data:
    accuracies, trainable numbers, bytes, seconds per step, losses, AdaLoRA's ranks."""
    check_instance("job", job, Mapping)
    cfg = check_instance("config", job["config"], RunConfig)
    data = _splits(cfg.max_length)
    model = build_model(job["method"], job["seed"], cfg, r=job.get("r"))
    w0 = encoder_matrices(model.bert) if job.get("delta_w") else None
    t0 = time.perf_counter()
    result = train_classifier(model, job["method"], data["train"], cfg.steps, job["lr"],
                              job["seed"], cfg, stop_after=job.get("stop_after"))
    out: dict[str, Any] = {k: job[k] for k in ("method", "lr", "seed")}
    out.update(r=job.get("r"), train_seconds=time.perf_counter() - t0,
               seconds_per_step=result.seconds_per_step, losses=result.losses,
               trainable=trainable_parameters(model), bytes=training_state_bytes(model),
               ranks=result.ranks)
    for split in () if job.get("stop_after") else job["score"]:
        out[split] = evaluate_accuracy(model, data[split])
    if w0 is not None:
        out["delta_w"] = delta_w_ranks(w0, encoder_matrices(model.bert))
    if job.get("lora_A"):
        out["lora_A"] = {n: m.lora_A.detach().clone() for n, m in lora_layers(model.bert).items()}
    if job.get("state"):
        out["state"] = {n: p.detach().clone() for n, p in model.named_parameters()
                        if p.requires_grad}
    return out


def _one_thread() -> None:
    torch.set_num_threads(1)


def _map(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    # worker processes by fork (they inherit the tokenized splits); one after another where the
    # platform has no fork (Windows)
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [run_one(j) for j in jobs]
        finally:
            torch.set_num_threads(threads)
    with mp.get_context("fork").Pool(workers, initializer=_one_thread) as pool:
        return pool.map(run_one, jobs, chunksize=1)


def _stats(runs: list[dict[str, Any]], key: str = "test") -> SeedStats:
    return SeedStats(tuple(r["seed"] for r in runs), tuple(r[key] for r in runs))


def run_experiment(cfg: RunConfig = FULL, workers: int = 2, keep_state: bool = False
                   ) -> dict[str, Any]:
    """The whole protocol for ``cfg``; returns a JSON-able record.

    1. **Grid on validation**: every learning rate of ``cfg.grids[m]`` with ``cfg.seeds[0]``;
       the setting with the best validation accuracy is chosen (ties: the smaller rate).
    2. **Seeds on test**: the chosen setting on every seed; test accuracy as
       ``mean ± std [min, max]`` and :func:`~lora_edu.toy.compare_seeds` verdicts between every
       pair of methods (margin ``cfg.margin``).
    3. With ``cfg.analysis``: :func:`delta_w_ranks` of full fine-tuning (seed 0, chosen rate) and
       :func:`lora_subspace_similarity` of LoRA r = 4 against r = 16 on W_q, W_v (seed 0, the
       rate chosen for r = ``cfg.r``).

    Runs go to ``workers`` fork processes of one thread each (1, or a platform without fork: in
    this process, one thread).
    ``keep_state``: also return the chosen ``lora_qv`` run's trainable tensors under
    ``"lora_qv_state"`` (not JSON-able; for an export check).
    """
    check_instance("cfg", cfg, RunConfig)
    workers = check_int("workers", workers, 1)
    check_instance("keep_state", keep_state, bool)
    start = time.perf_counter()
    seed0 = cfg.seeds[0]
    grid_jobs = [dict(method=m, lr=lr, seed=seed0, config=cfg, score=("validation", "test"),
                      delta_w=(m == "full" and cfg.analysis),
                      state=(m == "lora_qv" and keep_state))
                 for m in cfg.methods for lr in cfg.grids[m]]
    grid = _map(grid_jobs, workers)
    chosen = {}
    for m in cfg.methods:
        runs = [g for g in grid if g["method"] == m]
        chosen[m] = max(runs, key=lambda g: (g["validation"], -g["lr"]))
    seed_jobs = [dict(method=m, lr=chosen[m]["lr"], seed=s, config=cfg, score=("test",))
                 for m in cfg.methods for s in cfg.seeds[1:]]
    if cfg.analysis and "lora_qv" in cfg.methods:
        seed_jobs += [dict(method="lora_qv", lr=chosen["lora_qv"]["lr"], seed=seed0,
                           config=cfg, score=("test",), r=r, lora_A=True) for r in (4, 16)]
    extra = _map(seed_jobs, workers)
    per_method = {m: [chosen[m]] + [e for e in extra if e["method"] == m and e["r"] is None]
                  for m in cfg.methods}
    stats = {m: _stats(per_method[m]) for m in cfg.methods}
    config = asdict(cfg)
    config["grids"] = {m: list(v) for m, v in cfg.grids.items()}
    record: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "machine": {"processor": platform.machine(), "system": platform.system(),
                    "workers": workers, "threads_per_worker": 1},
        "config": config,
        "grid": [{k: g[k] for k in ("method", "lr", "seed", "validation", "test")}
                 for g in grid],
        "chosen": {m: {"lr": chosen[m]["lr"], "validation": chosen[m]["validation"]}
                   for m in cfg.methods},
        "methods": {},
    }
    for m in cfg.methods:
        runs = per_method[m]
        record["methods"][m] = {
            "test": {str(r["seed"]): r["test"] for r in runs},
            "summary": stats[m].fmt(),
            "trainable": runs[0]["trainable"],
            "bytes": runs[0]["bytes"],
            "seconds_per_step": {str(r["seed"]): r["seconds_per_step"] for r in runs},
            "losses": {str(r["seed"]): r["losses"] for r in runs},
        }
        if m == "adalora":
            record["methods"][m]["allocation"] = {str(r["seed"]): allocation_table(r["ranks"])
                                                  for r in runs}
    record["verdicts"] = {f"{a} vs {b}": compare_seeds(stats[a], stats[b], cfg.margin)
                          for i, a in enumerate(cfg.methods) for b in cfg.methods[i + 1:]}
    if cfg.analysis and "full" in cfg.methods:
        record["delta_w"] = chosen["full"]["delta_w"]
    if cfg.analysis and "lora_qv" in cfg.methods:
        by_r = {e["r"]: e for e in extra if e["r"] is not None}
        record["subspace_similarity_r4_r16"] = lora_subspace_similarity(by_r[4]["lora_A"],
                                                                        by_r[16]["lora_A"])
        record["lora_rank_test"] = {str(r): by_r[r]["test"] for r in (4, 16)}
    if keep_state and "lora_qv" in cfg.methods:
        record["lora_qv_state"] = chosen["lora_qv"]["state"]
    record["wall_seconds"] = time.perf_counter() - start
    return record

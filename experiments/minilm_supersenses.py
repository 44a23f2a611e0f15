"""Chapter 9's experiment: all-MiniLM-L6-v2 fine-tuned on WordNet noun supersenses.

Ten noun supersenses (``noun.animal``, ``noun.act``, …;
:func:`lora_edu.wordnet.wordnet_supersenses`, 280/60/60 train/validation/test texts per class,
``"lemma: definition"``) are classified by a new linear head on the mean-pooled hidden states of
MiniLM-L6 (:mod:`lora_edu.encoder`). Every method freezes the embeddings and trains the head;
they differ in what else they train:

==========  ===========================================================================
frozen      nothing else: the floor (a linear probe of the pretrained sentence embedding)
full        every encoder weight (full fine-tuning)
lora_qv     LoRA on W_q, W_v of the 6 layers (source §2.3 (1)), r = 8, s = α/r = 2
lora_all    LoRA on all 36 linear layers at a similar budget (r = 2)
qlora_qv    the same LoRA on W_q, W_v over an NF4 + double-quantized base (source §4)
adalora     AdaLoRA on the 36 matrices, pruned by the cubic schedule to LoRA q,v's budget
            (96 triplets = 8 × 12; source §3)
adapters    Houlsby adapters (bottleneck 8) after ``attention.output.dense`` and the FFN's
            ``output.dense`` of every layer (6 + 6; source §5)
==========  ===========================================================================

Protocol (CONTRIBUTING.md, "Evidence"): each method's learning rate is chosen from a small grid
on the VALIDATION split with seed 0; the chosen setting then runs on every seed and is scored on
TEST; results are ``mean ± std [min, max]`` (:class:`lora_edu.toy.SeedStats`) and "A beats B" only
through :func:`lora_edu.toy.compare_seeds`. Alongside: trainable parameters, training-state
bytes (weights as stored + gradients and two Adam moments of the trainable ones), time per step
(shown, never asserted), the effective rank of the real ΔW of full fine-tuning (source §2.1's
low intrinsic rank) against a Gaussian matrix of the same shape and norm, the LoRA paper's
subspace similarity φ between r = 4 and r = 16 adapters, AdaLoRA's final allocation, and an
interop check of the exported adapter with PEFT (optional; peft/transformers are imported only
there).

Usage::

    python -m experiments.minilm_supersenses --reduced   # a few minutes at most, 2 cores
    python -m experiments.minilm_supersenses --full      # the whole experiment (30–90 min)

Both write ``experiments/results/minilm_supersenses[_reduced].json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import multiprocessing as mp
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import lora_edu
from lora_edu.adalora import (
    RankAllocator,
    apply_adalora,
    budget_from_average_rank,
    orthogonal_penalty,
)
from lora_edu.adapter import apply_adapters
from lora_edu.encoder import (
    MiniLMEncoder,
    mean_pool,
    minilm_encoder,
    minilm_tokenizer,
    tokenize_texts,
)
from lora_edu.inject import count_parameters
from lora_edu.lora import apply_lora, export_peft, lora_layers, merge_lora
from lora_edu.lowrank import effective_rank, singular_values, subspace_similarity_grid
from lora_edu.pretrained import minilm_file
from lora_edu.qlora import prepare_qlora, storage_report
from lora_edu.toy import SeedStats, compare_seeds
from lora_edu.wordnet import wordnet_supersenses

__all__ = [
    "METHODS", "ALL_LINEAR", "QV", "ADAPTER_TARGETS", "RunConfig", "FULL", "REDUCED",
    "SupersenseClassifier", "TokenizedSplit", "tokenize_split", "batches", "build_model",
    "trainable_parameters", "training_state_bytes", "train", "evaluate", "delta_w_ranks",
    "lora_subspace_similarity", "allocation_table", "run_one", "run_experiment", "peft_interop",
]

#: The methods, in the order of the chapter's table.
METHODS = ("frozen", "full", "lora_qv", "lora_all", "qlora_qv", "adalora", "adapters")
#: BertModel's names of the 6 linear layers of a layer (× 6 layers = 36 matrices). "output.dense"
#: alone selects both ``attention.output.dense`` and the FFN's ``output.dense``; listed
#: together the selection is the 36 distinct layers (``pooler.dense`` is not selected).
ALL_LINEAR = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
              "output.dense")
#: W_q and W_v (source §2.3 (1)).
QV = ("query", "value")
#: Houlsby's placement: after the attention output projection and after the FFN output. The
#: suffix "output.dense" matches both (6 + 6 layers).
ADAPTER_TARGETS = ("output.dense",)
#: Adam keeps two moments per trainable number; the gradient is one more copy.
ADAM_COPIES = 4


@dataclass(frozen=True)
class RunConfig:
    """One version of the experiment (``FULL`` or ``REDUCED``).

    ``steps``: optimizer steps per run (batch ``batch_size``); ``grids``: the learning rates tried
    per method (the encoder-side rate; the head's rate is ``head_lr``, except for ``frozen`` whose
    grid is the head's rate); ``seeds``: the test seeds (the grid runs with ``seeds[0]``).
    """

    name: str
    methods: tuple[str, ...]
    steps: int
    seeds: tuple[int, ...]
    grids: dict[str, tuple[float, ...]]
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
    analysis: bool = True
    interop: bool = True
    margin: float = 0.01


_GRIDS = {
    "frozen": (3e-3, 1e-2, 3e-2),
    "full": (3e-5, 1e-4, 3e-4),
    "lora_qv": (1e-3, 3e-3, 1e-2),
    "lora_all": (1e-3, 3e-3, 1e-2),
    "qlora_qv": (1e-3, 3e-3, 1e-2),
    "adalora": (3e-3, 1e-2, 3e-2),
    "adapters": (1e-3, 3e-3, 1e-2),
}
FULL = RunConfig("full", METHODS, steps=176, seeds=(0, 1, 2), grids=_GRIDS)
REDUCED = RunConfig("reduced", ("frozen", "full", "lora_qv"), steps=36, seeds=(0, 1, 2),
                    grids={"frozen": (1e-2, 3e-2), "full": (1e-4, 3e-4),
                           "lora_qv": (3e-3, 1e-2)},
                    analysis=False, interop=False)


# --------------------------------------------------------------------------- data

@dataclass(frozen=True)
class TokenizedSplit:
    """A split tokenized once: ``ids``/``mask`` (n, L) right-padded to the longest text,
    ``lengths`` (n,) real tokens per text, ``labels`` (n,)."""

    ids: Tensor
    mask: Tensor
    lengths: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The rows ``index``, cut to their longest text (padding stays on the right)."""
        width = int(self.lengths[index].max())
        return self.ids[index, :width], self.mask[index, :width], self.labels[index]


def tokenize_split(pairs: Sequence[tuple[str, int]], max_length: int = 32) -> TokenizedSplit:
    """Tokenize ``(text, label)`` pairs once (truncated to ``max_length`` tokens)."""
    ids, mask = tokenize_texts(minilm_tokenizer(max_length), [t for t, _ in pairs])
    return TokenizedSplit(ids, mask, mask.sum(dim=1), torch.tensor([y for _, y in pairs]))


def batches(split: TokenizedSplit, batch_size: int, steps: int, seed: int,
            pool: int = 8) -> list[Tensor]:
    """``steps`` index batches over epochs of ``split``: each epoch a fresh permutation (from
    ``seed``), cut into pools of ``pool`` batches, each pool sorted by length (little padding),
    then the batches of the epoch shuffled. Every text appears once per epoch."""
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

    ``bert`` is the (adapted) :class:`~lora_edu.encoder.MiniLMEncoder`, so its module names stay
    BertModel's (``export_peft(model.bert, …)`` writes keys PEFT finds on ``BertModel``).
    """

    def __init__(self, encoder: nn.Module, n_classes: int, hidden: int = 384) -> None:
        super().__init__()
        self.bert = encoder
        self.head = nn.Linear(hidden, n_classes)

    def pooled(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The mean-pooled last hidden states (batch, hidden)."""
        return mean_pool(self.bert(ids, mask), mask)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.pooled(ids, mask))


def build_model(method: str, seed: int, cfg: RunConfig = FULL, n_classes: int = 10,
                r: int | None = None, encoder: MiniLMEncoder | None = None
                ) -> SupersenseClassifier:
    """The classifier of ``method`` (one of :data:`METHODS`), its trainable parts set.

    Embeddings are frozen for every method and the pooler (unused by mean pooling) too; the head
    is drawn from a generator seeded with ``seed`` and always trainable. ``r`` overrides the LoRA
    rank of ``lora_qv`` (the subspace analysis uses 4 and 16). ``encoder``: a pretrained encoder
    to adapt (default: a fresh :func:`~lora_edu.encoder.minilm_encoder`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    enc = encoder if encoder is not None else minilm_encoder(dropout=cfg.dropout,
                                                             freeze_embeddings=True)
    if method == "frozen":
        enc.requires_grad_(False)
    elif method == "full":
        enc.requires_grad_(True)
        enc.embeddings.requires_grad_(False)
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
    elif method == "adapters":
        apply_adapters(enc, ADAPTER_TARGETS, bottleneck=cfg.adapter_bottleneck, seed=seed)
    enc.pooler.requires_grad_(False)
    model = SupersenseClassifier(enc, n_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(model.head.in_features)
        model.head.weight.uniform_(-bound, bound, generator=g)
        model.head.bias.zero_()
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Numbers that receive gradient updates (:func:`lora_edu.inject.count_parameters`)."""
    return count_parameters(model)[0]


def training_state_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the training state: every tensor as stored (parameters and buffers, NF4 codes
    included, each once; :func:`lora_edu.qlora.storage_report`) plus, per trainable number, its
    gradient and Adam's two moments (same dtype as the parameter). Activations are not counted.
    """
    report = storage_report(model)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    extra = (ADAM_COPIES - 1) * trainable
    return {"stored": report.total, "grads_and_adam": extra, "total": report.total + extra}


# --------------------------------------------------------------------------- train / evaluate

@dataclass
class TrainResult:
    """What :func:`train` returns: the loss per step, seconds per step (median), the AdaLoRA
    allocator's final ranks (``{}`` for other methods)."""

    losses: list[float]
    seconds_per_step: float
    ranks: dict[str, int] = field(default_factory=dict)


def _optimizer(model: SupersenseClassifier, method: str, lr: float, head_lr: float
               ) -> torch.optim.Optimizer:
    head = list(model.head.parameters())
    body = [p for p in model.bert.parameters() if p.requires_grad]
    if method == "frozen":
        return torch.optim.Adam(head, lr=lr)
    return torch.optim.Adam([{"params": body, "lr": lr}, {"params": head, "lr": head_lr}])


def train(model: SupersenseClassifier, method: str, split: TokenizedSplit, steps: int, lr: float,
          seed: int, cfg: RunConfig = FULL) -> TrainResult:
    """Adam with linear warm-up (10 % of the steps) and linear decay to 0, cross-entropy loss,
    ``steps`` batches of :func:`batches` (seeded with ``seed``; dropout, on for every method while
    training, draws from torch's global generator, seeded here too). AdaLoRA adds the
    orthogonality penalty (γ = 0.1) and steps a :class:`~lora_edu.adalora.RankAllocator` between
    backward and the optimizer step (cubic schedule, t_init / t_final = ``cfg.t_init_frac`` /
    ``cfg.t_final_frac`` of the steps, from init_r × 36 triplets down to LoRA q,v's 8 × 12)."""
    torch.manual_seed(seed)
    opt = _optimizer(model, method, lr, cfg.head_lr)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min((t + 1) / warm, max(0.0, (steps - t) / max(1, steps - warm))))
    allocator = None
    if method == "adalora":
        allocator = RankAllocator(model, target_budget=budget_from_average_rank(cfg.r, 2 * 6),
                                  total_steps=steps, t_init=max(1, int(cfg.t_init_frac * steps)),
                                  t_final=max(1, int(cfg.t_final_frac * steps)))
    model.train()
    losses, times = [], []
    for step, index in enumerate(batches(split, cfg.batch_size, steps, seed), start=1):
        t0 = time.perf_counter()
        ids, mask, y = split.batch(index)
        loss = nn.functional.cross_entropy(model(ids, mask), y)
        total = loss + orthogonal_penalty(model, 0.1) if allocator is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        loss = loss.detach()
        if allocator is not None:
            allocator.step(step)
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    model.eval()
    ranks = {}
    if allocator is not None:
        allocator.apply_masks()
        ranks = allocator.ranks()
        allocator.remove_hooks()
    return TrainResult(losses, float(np.median(times)), ranks)


@torch.no_grad()
def evaluate(model: SupersenseClassifier, split: TokenizedSplit, batch_size: int = 128) -> float:
    """Accuracy on ``split`` in eval mode (texts sorted by length, batches of ``batch_size``)."""
    model.eval()
    order = torch.argsort(split.lengths, stable=True)
    correct = 0
    for i in range(0, len(split), batch_size):
        ids, mask, y = split.batch(order[i:i + batch_size])
        correct += int((model(ids, mask).argmax(dim=-1) == y).sum())
    return correct / len(split)


# --------------------------------------------------------------------------- analyses

def _linear_weights(encoder: nn.Module) -> dict[str, Tensor]:
    """The 36 matrices W of the encoder layers (plain ``nn.Linear``), by name."""
    return {n: m.weight.detach().clone() for n, m in encoder.named_modules()
            if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")}


def delta_w_ranks(w0: dict[str, Tensor], w1: dict[str, Tensor], energy: float = 0.9,
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """Per matrix: effective rank (:func:`lora_edu.lowrank.effective_rank` at ``energy``) of
    ΔW = W1 − W0, of a Gaussian matrix of the same shape rescaled to ‖ΔW‖_F, the full rank
    min(d, k), and ‖ΔW‖_F / ‖W0‖_F. Source §2.1: ΔW has a low intrinsic rank."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(w0):
        dw = (w1[name] - w0[name]).to(torch.float64)
        norm = float(torch.linalg.matrix_norm(dw))
        noise = torch.randn(dw.shape, generator=g, dtype=torch.float64)
        noise *= norm / float(torch.linalg.matrix_norm(noise))
        out[name] = {
            "shape": list(dw.shape),
            "effective_rank": effective_rank(singular_values(dw), energy),
            "random_effective_rank": effective_rank(singular_values(noise), energy),
            "full_rank": min(dw.shape),
            "relative_norm": norm / float(torch.linalg.matrix_norm(w0[name].double())),
        }
    return out


def lora_subspace_similarity(a_small: dict[str, Tensor], a_large: dict[str, Tensor]
                             ) -> dict[str, list[list[float]]]:
    """φ(A_small, A_large, i, j) grids (LoRA paper §7.2 eq. 4) for each adapted layer, via
    :func:`lora_edu.lowrank.subspace_similarity_grid`; ``a_*`` map layer names to A (r×k)."""
    return {n: subspace_similarity_grid(a_small[n], a_large[n]).tolist() for n in sorted(a_small)}


def allocation_table(ranks: dict[str, int]) -> dict[str, list[int]]:
    """AdaLoRA's final ranks as ``{matrix type: [rank of layer 0, …, layer 5]}``."""
    kinds = {"attention.self.query": "query", "attention.self.key": "key",
             "attention.self.value": "value", "attention.output.dense": "attn_out",
             "intermediate.dense": "ffn_in", "output.dense": "ffn_out"}
    table: dict[str, list[int]] = {k: [0] * 6 for k in kinds.values()}
    for name, r in ranks.items():
        parts = name.split(".")          # [bert.]encoder.layer.i.<rest>
        i = parts.index("layer")
        rest = ".".join(parts[i + 2:])
        table[kinds[rest]][int(parts[i + 1])] = r
    return table


# --------------------------------------------------------------------------- one run

_DATA: dict[str, TokenizedSplit] = {}


def _data(max_length: int) -> dict[str, TokenizedSplit]:
    if not _DATA:
        d = wordnet_supersenses()
        for s in ("train", "validation", "test"):
            _DATA[s] = tokenize_split(getattr(d, s), max_length)
    return _DATA


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_one(job: dict) -> dict:
    """One training run: ``job`` holds method, lr, seed, the :class:`RunConfig` (``config``),
    the splits to score, and flags for the extra outputs (``delta_w``: ΔW ranks of full
    fine-tuning; ``lora_A``: the trained A of every LoRA layer; ``state``: the trainable tensors,
    for the interop check)."""
    cfg = job["config"]
    data = _data(cfg.max_length)
    model = build_model(job["method"], job["seed"], cfg, r=job.get("r"))
    w0 = _linear_weights(model.bert) if job.get("delta_w") else None
    t0 = time.perf_counter()
    result = train(model, job["method"], data["train"], cfg.steps, job["lr"], job["seed"], cfg)
    out = {k: job[k] for k in ("method", "lr", "seed")}
    out.update(r=job.get("r"), train_seconds=time.perf_counter() - t0,
               seconds_per_step=result.seconds_per_step, final_loss=result.losses[-1],
               trainable=trainable_parameters(model), bytes=training_state_bytes(model),
               ranks=result.ranks)
    for split in job["score"]:
        out[split] = evaluate(model, data[split])
    if w0 is not None:
        out["delta_w"] = delta_w_ranks(w0, _linear_weights(model.bert))
    if job.get("lora_A"):
        out["lora_A"] = {n: m.lora_A.detach().clone() for n, m in lora_layers(model.bert).items()}
    if job.get("state"):
        out["state"] = {n: p.detach().clone() for n, p in model.named_parameters()
                        if p.requires_grad}
    return out


def _map(jobs: list[dict], workers: int) -> list[dict]:
    if workers <= 1:
        _init_worker()
        return [run_one(j) for j in jobs]
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        return pool.map(run_one, jobs, chunksize=1)


# --------------------------------------------------------------------------- interop

def peft_interop(cfg: RunConfig, state: dict[str, Tensor], directory: Path,
                 texts: int | None = None) -> dict[str, float]:
    """Rebuild the trained LoRA q,v classifier from ``state``, export its encoder's adapter with
    :func:`lora_edu.lora.export_peft`, load it with PEFT onto ``transformers``' ``BertModel``
    holding the same pretrained weights, and compare pooled outputs and logits on the test split
    (relative max difference; the first ``texts`` test texts, default all); then
    :func:`lora_edu.lora.merge_lora` and compare again. peft and transformers are imported here
    only (test-only requirements)."""
    import peft
    import transformers

    data = _data(cfg.max_length)
    model = build_model("lora_qv", 0, cfg)
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected or set(state) != {n for n, p in model.named_parameters() if p.requires_grad}:
        raise ValueError(f"state must hold exactly the trainable tensors, got {sorted(state)[:4]}")
    model.eval()
    export_peft(model.bert, directory)
    base = minilm_encoder(dropout=cfg.dropout)
    config = transformers.BertConfig.from_json_file(str(minilm_file().with_name("config.json")))
    hf = transformers.BertModel(config, add_pooling_layer=True)
    hf.load_state_dict(base.state_dict(), strict=True)
    hf = peft.PeftModel.from_pretrained(hf, str(directory)).eval()
    n = len(data["test"]) if texts is None else min(texts, len(data["test"]))
    ids, mask, _ = data["test"].batch(torch.arange(n))
    with torch.no_grad():
        ours = model.pooled(ids, mask)
        theirs = mean_pool(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        logits, logits_hf = model.head(ours), model.head(theirs)
        merged = copy.deepcopy(model)
        merge_lora(merged.bert)
        plain = all(type(m) is nn.Linear for n, m in merged.bert.named_modules()
                    if n.endswith((".query", ".value")))
        logits_merged = merged(ids, mask)

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max())

    return {"pooled_rel_diff": rel(theirs, ours), "logits_rel_diff": rel(logits_hf, logits),
            "merged_logits_rel_diff": rel(logits_merged, logits), "merged_plain_linear": plain}


# --------------------------------------------------------------------------- the experiment

def _stats(runs: list[dict], key: str = "test") -> SeedStats:
    return SeedStats(tuple(r["seed"] for r in runs), tuple(r[key] for r in runs))


def run_experiment(cfg: RunConfig, workers: int = 2, out: Path | None = None) -> dict:
    """Grid on validation (seed ``cfg.seeds[0]``), chosen setting on every seed (test), the
    analyses; returns (and writes to ``out``) the JSON-able record."""
    start = time.perf_counter()
    seed0 = cfg.seeds[0]
    grid_jobs = [dict(method=m, lr=lr, seed=seed0, config=cfg,
                      score=("validation", "test"), delta_w=(m == "full" and cfg.analysis),
                      state=(m == "lora_qv" and cfg.interop))
                 for m in cfg.methods for lr in cfg.grids[m]]
    grid = _map(grid_jobs, workers)
    chosen = {}
    for m in cfg.methods:
        runs = [g for g in grid if g["method"] == m]
        chosen[m] = max(runs, key=lambda g: (g["validation"], -g["lr"]))  # ties: smaller lr
    seed_jobs = [dict(method=m, lr=chosen[m]["lr"], seed=s, config=cfg, score=("test",))
                 for m in cfg.methods for s in cfg.seeds[1:]]
    if cfg.analysis and "lora_qv" in cfg.methods:
        seed_jobs += [dict(method="lora_qv", lr=chosen["lora_qv"]["lr"], seed=seed0,
                           config=cfg, score=("test",), r=r, lora_A=True) for r in (4, 16)]
    extra = _map(seed_jobs, workers)
    per_method = {m: [chosen[m]] + [e for e in extra if e["method"] == m and e["r"] is None]
                  for m in cfg.methods}
    stats = {m: _stats(per_method[m]) for m in cfg.methods}
    record: dict = {
        "command": " ".join([Path(sys.executable).name, "-m", "experiments.minilm_supersenses",
                             *sys.argv[1:]]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"lora_edu": lora_edu.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "config": {k: v for k, v in asdict(cfg).items()},
        "workers": workers,
        "grid": [{k: g[k] for k in ("method", "lr", "seed", "validation")} for g in grid],
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
            "seconds_per_step": [r["seconds_per_step"] for r in runs],
            "final_loss": [r["final_loss"] for r in runs],
        }
        if m == "adalora":
            record["methods"][m]["allocation"] = {str(r["seed"]): allocation_table(r["ranks"])
                                                  for r in runs}
    record["verdicts"] = {f"{a} vs {b}": compare_seeds(stats[a], stats[b], cfg.margin)
                          for i, a in enumerate(cfg.methods) for b in cfg.methods[i + 1:]}
    if cfg.analysis and "full" in cfg.methods:
        record["delta_w"] = chosen["full"]["delta_w"]
    if cfg.analysis and "lora_qv" in cfg.methods:
        a4 = next(e for e in extra if e["r"] == 4)["lora_A"]
        a16 = next(e for e in extra if e["r"] == 16)["lora_A"]
        record["subspace_similarity_r4_r16"] = lora_subspace_similarity(a4, a16)
    if cfg.interop and "lora_qv" in cfg.methods:
        try:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                record["interop"] = peft_interop(cfg, chosen["lora_qv"]["state"], Path(tmp))
        except ImportError as err:          # peft/transformers are optional here
            record["interop"] = {"skipped": str(err)}
    record["wall_seconds"] = time.perf_counter() - start
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return record


def _print(record: dict) -> None:
    print(f"{'method':10s} {'lr':>8s} {'val':>6s} {'test: mean ± std [min, max]':32s} "
          f"{'trainable':>10s} {'state MB':>9s} {'s/step':>7s}")
    for m, r in record["methods"].items():
        c = record["chosen"][m]
        print(f"{m:10s} {c['lr']:8.0e} {c['validation']:6.3f} {r['summary']:32s} "
              f"{r['trainable']:10d} {r['bytes']['total'] / 2**20:9.1f} "
              f"{float(np.median(r['seconds_per_step'])):7.3f}")
    for k, v in record["verdicts"].items():
        words = {1: "first beats second", -1: "second beats first", 0: "within noise"}
        print(f"  {k}: {words[v]}")
    alloc = record["methods"].get("adalora", {}).get("allocation")
    if alloc:
        tables = list(alloc.values())
        print("AdaLoRA final ranks, mean over seeds (per matrix type: layers 0 … 5):")
        for kind in tables[0]:
            mean = np.mean([t[kind] for t in tables], axis=0)
            print(f"  {kind:9s} " + " ".join(f"{v:5.1f}" for v in mean) + f"  Σ {mean.sum():5.1f}")
    if "delta_w" in record:
        rows = record["delta_w"].values()
        er = [v["effective_rank"] for v in rows]
        rr = [v["random_effective_rank"] for v in rows]
        print(f"ΔW of full fine-tuning, effective rank at 90 % energy over the 36 matrices: "
              f"median {np.median(er):.0f} [min {min(er)}, max {max(er)}]; Gaussian of the same "
              f"shape and norm: median {np.median(rr):.0f} [min {min(rr)}, max {max(rr)}]")
    if "subspace_similarity_r4_r16" in record:
        grids = np.array(list(record["subspace_similarity_r4_r16"].values()))
        print(f"φ(A_r4, A_r16, i, j) mean over W_q, W_v: φ(1,1) {grids[:, 0, 0].mean():.3f}, "
              f"φ(4,4) {grids[:, 3, 3].mean():.3f}, φ(4,16) {grids[:, 3, 15].mean():.3f} "
              f"(random subspaces of ℝ^384: about 1/384, 4/384, 16/384)")
    if "interop" in record:
        print("interop:", record["interop"])
    print(f"wall time {record['wall_seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="the whole experiment (30–90 min)")
    mode.add_argument("--reduced", action="store_true", help="the small version (≤ 200 s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="fork worker processes (1 thread each)")
    args = parser.parse_args(argv)
    cfg = FULL if args.full else REDUCED
    suffix = "" if args.full else "_reduced"
    out = Path(__file__).resolve().parent / "results" / f"minilm_supersenses{suffix}.json"
    _print(run_experiment(cfg, args.workers, out))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fast tests of chapter 9's fine-tuning set-up (lora_edu.supersense) and its experiment script.

Tiny step counts only: the accounting is checked against hand counts from the layer shapes of
MiniLM-L6 (6 layers, hidden 384, FFN 1536, 10 classes), the training-state bytes against the
bytes actually held after an optimizer step, evaluation against one-text-at-a-time predictions,
the ΔW rank analysis against matrices of known rank.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, require
from torch import nn

from lora_edu import supersense as E
from lora_edu.adapter import adapter_layers
from lora_edu.lora import lora_layers
from lora_edu.memory import measure_state_bytes

H, FFN, LAYERS, CLASSES = 384, 1536, 6, 10
HEAD = H * CLASSES + CLASSES
CFG = dataclasses.replace(E.FULL, steps=3)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return E.supersense_splits(CFG.max_length)


def _subset(split: E.TokenizedSplit, index: torch.Tensor) -> E.TokenizedSplit:
    ids, mask, y = split.batch(index)
    return E.TokenizedSplit(ids, mask, mask.sum(dim=1), y)


# ------------------------------------------------------------------ accounting (hand counts)

def _hand_trainable(method: str) -> int:
    attn = 4 * (H * H + H)                                    # query, key, value, attn out
    ffn = (H * FFN + FFN) + (FFN * H + H)
    norms = 2 * 2 * H
    per_rank = {"square": H + H, "ffn": H + FFN}               # r·(d + k) per rank unit
    if method == "frozen":
        body = 0
    elif method == "full":
        body = LAYERS * (attn + ffn + norms)
    elif method in ("lora_qv", "qlora_qv"):
        body = LAYERS * 2 * CFG.r * per_rank["square"]
    elif method == "lora_all":
        body = LAYERS * CFG.r_all * (4 * per_rank["square"] + 2 * per_rank["ffn"])
    elif method == "adalora":                                 # P, λ, Q: r·(d + k + 1)
        body = LAYERS * CFG.adalora_init_r * (4 * (per_rank["square"] + 1)
                                              + 2 * (per_rank["ffn"] + 1))
    else:                                                     # 12 adapters of 2·d·m + d + m
        m = CFG.adapter_bottleneck
        body = 2 * LAYERS * (2 * H * m + H + m)
    return body + HEAD


@pytest.mark.parametrize("method", E.METHODS)
def test_trainable_parameters_match_hand_counts(method):
    model = E.build_model(method, 0, CFG)
    assert E.trainable_parameters(model) == _hand_trainable(method)
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_budgets_are_similar_to_lora_qv():
    qv = _hand_trainable("lora_qv") - HEAD
    for method in ("lora_all", "adapters"):
        assert 0.9 * qv <= _hand_trainable(method) - HEAD <= 1.25 * qv


def test_adapters_sit_after_attention_output_and_ffn_output():
    names = sorted(adapter_layers(E.build_model("adapters", 0, CFG).bert))
    expected = sorted([f"encoder.layer.{i}.attention.output.dense" for i in range(LAYERS)]
                      + [f"encoder.layer.{i}.output.dense" for i in range(LAYERS)])
    assert names == expected


def test_all_linear_selects_the_36_matrices_and_not_the_pooler():
    names = sorted(lora_layers(E.build_model("lora_all", 0, CFG).bert))
    assert len(names) == 6 * LAYERS
    assert all(n.startswith("encoder.layer.") for n in names)


def test_training_state_bytes_hand_count_and_measured(data):
    model = E.build_model("lora_qv", 0, CFG)
    total_params = sum(p.numel() for p in model.parameters())
    trainable = _hand_trainable("lora_qv")
    got = E.training_state_bytes(model)
    # float32 weights + one bool "merged" flag per LoRA layer (12 layers)
    assert got["stored"] == 4 * total_params + 2 * LAYERS
    assert got["grads_and_adam"] == 3 * 4 * trainable           # grad + two Adam moments
    # after a real step: the bytes held by weights, grads and Adam state (less its step counters)
    opt = E._optimizer(model, "lora_qv", 1e-3, 1e-3)
    ids, mask, y = data["train"].batch(torch.arange(8))
    nn.functional.cross_entropy(model(ids, mask), y).backward()
    opt.step()
    measured = measure_state_bytes(model, opt)
    step_counters = sum(s["step"].numel() * s["step"].element_size() for s in opt.state.values())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert measured.weights + buffers + measured.gradients + measured.optimizer \
        - step_counters == got["total"]


def test_qlora_stores_the_36_matrices_in_nf4_with_double_quant():
    lora = E.training_state_bytes(E.build_model("lora_qv", 0, CFG))["stored"]
    qlora = E.training_state_bytes(E.build_model("qlora_qv", 0, CFG))["stored"]
    n = LAYERS * (4 * H * H + 2 * H * FFN)                      # the 36 weight matrices
    # fp32 (4 bytes) → 4-bit codes + one 8-bit constant per 64 + one fp32 per 256 constants
    saving = n * 4 - n // 2 - n // 64 - 4 * (n // 64 // 256)
    assert abs((lora - qlora) - saving) <= 36 * 16               # a few bytes per layer at most


# ------------------------------------------------------------------ data, training, evaluation

def test_batches_cover_each_epoch_once_and_pad_less(data):
    split = data["train"]
    n = len(split)
    steps = 2 * (n // 32 + 1)
    bs = E.length_batches(split, 32, steps, seed=3)
    first = torch.cat(bs[: n // 32 + 1])
    assert sorted(first.tolist()) == list(range(n))
    width = sum(int(split.lengths[b].max()) * len(b) for b in bs[:20])
    g = torch.Generator().manual_seed(3)
    rand = [torch.randperm(n, generator=g)[:32] for _ in range(20)]
    assert width < sum(int(split.lengths[b].max()) * len(b) for b in rand)


def test_train_changes_only_the_adapter_and_head(data):
    model = E.build_model("lora_qv", 0, CFG)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = E.train_classifier(model, "lora_qv", data["train"], 3, 1e-3, 0, CFG)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        if "lora_A" in n or "lora_B" in n or n.startswith("head."):
            assert changed, n
        else:
            assert not changed, n


def test_adalora_prunes_to_lora_qv_budget(data):
    cfg = dataclasses.replace(CFG, steps=5)
    model = E.build_model("adalora", 0, cfg)
    result = E.train_classifier(model, "adalora", data["train"], 5, 1e-3, 0, cfg)
    assert sum(result.ranks.values()) == cfg.r * 2 * LAYERS
    table = E.allocation_table(result.ranks)
    assert sorted(table) == sorted(E.MATRIX_KINDS.values())
    assert sum(map(sum, table.values())) == cfg.r * 2 * LAYERS


def test_evaluate_matches_one_text_at_a_time(data):
    model = E.build_model("lora_qv", 1, CFG)
    with torch.no_grad():                                     # a non-trivial adapter
        for layer in lora_layers(model.bert).values():
            layer.lora_B.normal_(0, 0.05)
    sub = _subset(data["validation"], torch.arange(0, 600, 30))
    hits = 0
    with torch.no_grad():
        for i in range(len(sub)):
            ids, mask, y = sub.batch(torch.tensor([i]))
            hits += int(model(ids, mask).argmax() == y[0])
    assert E.evaluate_accuracy(model, sub, batch_size=7) == hits / len(sub)


def test_allocation_table_by_layer_and_type():
    ranks = {"bert.encoder.layer.5.output.dense": 3, "bert.encoder.layer.0.attention.self.key": 1,
             "bert.encoder.layer.2.attention.output.dense": 2}
    table = E.allocation_table(ranks)
    assert table["W_2 (FFN out)"] == [0, 0, 0, 0, 0, 3]
    assert table["W_k"] == [1, 0, 0, 0, 0, 0]
    assert table["W_o"] == [0, 0, 2, 0, 0, 0]


def test_stop_after_runs_the_first_steps_of_the_same_schedule(data):
    cfg = dataclasses.replace(CFG, steps=6)
    whole = E.train_classifier(E.build_model("lora_qv", 4, cfg), "lora_qv", data["train"], 6,
                               3e-3, 4, cfg)
    first = E.train_classifier(E.build_model("lora_qv", 4, cfg), "lora_qv", data["train"], 6,
                               3e-3, 4, cfg, stop_after=3)
    assert first.losses == whole.losses[:3]
    with pytest.raises(ValueError, match="^stop_after"):
        E.train_classifier(E.build_model("frozen", 0, cfg), "frozen", data["train"], 6, 1e-2, 0,
                           cfg, stop_after=7)


# ------------------------------------------------------------------ the linear probe

def test_linear_probe_reaches_the_optimum_scipy_finds():
    """The same convex objective minimised by scipy's L-BFGS-B (an independent optimiser)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    g = torch.Generator().manual_seed(5)
    n, k, c, wd = 200, 12, 4, 1e-2
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    y = (x[:, :c] + 0.8 * torch.randn(n, c, generator=g, dtype=torch.float64)).argmax(dim=1)
    W, b = E.fit_linear_probe(x, y, c, wd)
    X, Y = x.numpy(), y.numpy()

    def objective(theta):
        Wt, bt = theta[:c * k].reshape(c, k), theta[c * k:]
        z = X @ Wt.T + bt
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        p[np.arange(n), Y] -= 1
        value = np.mean(logsumexp(z, axis=1) - z[np.arange(n), Y]) + wd * np.sum(Wt ** 2)
        grad_W = p.T @ X / n + 2 * wd * Wt
        return value, np.concatenate([grad_W.ravel(), p.mean(axis=0)])

    ref = minimize(objective, np.zeros(c * k + c), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    assert np.allclose(W.numpy().ravel(), ref.x[:c * k], atol=1e-5)
    assert np.allclose(b.numpy(), ref.x[c * k:], atol=1e-5)
    ours = objective(np.concatenate([W.numpy().ravel(), b.numpy()]))[0]
    assert ours <= ref.fun + 1e-10


def test_linear_probe_argument_checks():
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="^labels"):
        E.fit_linear_probe(x, y[:5], 3, 0.0)
    with pytest.raises(ValueError, match="^labels"):
        E.fit_linear_probe(x, y, 2, 0.0)
    with pytest.raises(ValueError, match="^weight_decay"):
        E.fit_linear_probe(x, y, 3, -1.0)
    with pytest.raises(TypeError, match="^features"):
        E.fit_linear_probe(x.numpy(), y, 3, 0.0)


def test_pooled_features_are_the_classifiers_sentence_embeddings(data):
    model = E.build_model("frozen", 0, CFG)
    sub = _subset(data["test"], torch.arange(0, 600, 40))
    feats = E.pooled_features(model.bert, sub, batch_size=4)
    with torch.no_grad():
        direct = torch.cat([model.pooled(*sub.batch(torch.tensor([i]))[:2])
                            for i in range(len(sub))])
    assert feats.dtype == torch.float64 and feats.shape == (len(sub), 384)
    assert torch.allclose(feats.float(), direct, atol=1e-5)


# ------------------------------------------------------------------ analyses

def test_delta_w_ranks_of_a_known_low_rank_update():
    g = torch.Generator().manual_seed(0)
    w0 = {"a": torch.randn(64, 96, generator=g), "b": torch.randn(32, 32, generator=g)}
    u, v = torch.randn(64, 2, generator=g), torch.randn(2, 96, generator=g)
    w1 = {"a": w0["a"] + u @ v, "b": w0["b"] + torch.randn(32, 32, generator=g)}
    out = E.delta_w_ranks(w0, w1)
    assert out["a"]["effective_rank"] <= 2
    assert out["a"]["random_effective_rank"] > 20            # a Gaussian 64×96 is nearly full
    assert out["a"]["full_rank"] == 64
    expected = float(torch.linalg.matrix_norm((u @ v).double())
                     / torch.linalg.matrix_norm(w0["a"].double()))
    assert out["a"]["relative_norm"] == pytest.approx(expected, rel=1e-6)
    assert out["b"]["effective_rank"] > 10


def test_lora_subspace_similarity_identical_and_nested():
    g = torch.Generator().manual_seed(1)
    a16 = torch.randn(16, 384, generator=g, dtype=torch.float64)
    grid = E.lora_subspace_similarity({"q": a16[:4] * 3.0}, {"q": a16})
    assert len(grid["q"]) == 4 and len(grid["q"][0]) == 16
    # the row space of 3·A[:4] lies inside that of A: φ(i=4, j=16) = 1
    assert grid["q"][3][15] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------ interop with PEFT

def test_exported_adapter_matches_peft_and_merge(tmp_path):
    require("peft")
    require("transformers")
    model = E.build_model("lora_qv", 2, CFG)
    with torch.no_grad():
        for layer in lora_layers(model.bert).values():
            layer.lora_B.normal_(0, 0.05)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    if str(ROOT) not in sys.path:             # experiments/ sits at the repository root
        sys.path.insert(0, str(ROOT))
    from experiments.minilm_supersenses import peft_interop

    out = peft_interop(CFG, state, tmp_path, texts=64)
    assert out["pooled_rel_diff"] <= 1e-5
    assert out["logits_rel_diff"] <= 1e-5
    assert out["merged_logits_rel_diff"] <= 1e-5
    assert out["merged_plain_linear"] is True


# ------------------------------------------------------------------ bad input

BAD = [
    ("method", lambda: E.build_model("lora", 0, CFG), ValueError),
    ("seed", lambda: E.build_model("frozen", -1, CFG), ValueError),
    ("seed", lambda: E.build_model("frozen", 0.5, CFG), TypeError),
    ("cfg", lambda: E.build_model("frozen", 0, {"steps": 3}), TypeError),
    ("r", lambda: E.build_model("lora_qv", 0, CFG, r=0), ValueError),
    ("encoder", lambda: E.build_model("frozen", 0, CFG, encoder=nn.Linear(2, 2)), TypeError),
    ("methods", lambda: dataclasses.replace(CFG, methods=("lora",)), ValueError),
    ("methods", lambda: dataclasses.replace(CFG, methods=()), ValueError),
    ("steps", lambda: dataclasses.replace(CFG, steps=0), ValueError),
    ("seeds", lambda: dataclasses.replace(CFG, seeds=(0, 0)), ValueError),
    ("grids", lambda: dataclasses.replace(CFG, grids={"frozen": (1e-2,)}), ValueError),
    ("grids", lambda: dataclasses.replace(CFG, grids={m: (-1.0,) for m in E.METHODS}),
     ValueError),
    ("t_init_frac", lambda: dataclasses.replace(CFG, t_init_frac=0.9), ValueError),
    ("pairs", lambda: E.tokenize_split([]), ValueError),
    ("pairs", lambda: E.tokenize_split([("a text", "noun.act")]), TypeError),
    ("split", lambda: E.length_batches([1, 2], 2, 2, 0), TypeError),
    ("w0", lambda: E.delta_w_ranks({}, {}), ValueError),
    ("w1", lambda: E.delta_w_ranks({"a": torch.ones(2, 3)}, {"a": torch.ones(3, 2)}),
     ValueError),
    ("a_small", lambda: E.lora_subspace_similarity({"q": torch.ones(2, 4)}, {}), ValueError),
    ("ranks", lambda: E.allocation_table({"encoder.layer.0.attention.self.gate": 2}),
     ValueError),
    ("model", lambda: E.trainable_parameters("model"), TypeError),
]


@pytest.mark.parametrize("name,call,exc", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_is_rejected_naming_the_argument(name, call, exc):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(name), str(info.value)


def test_length_batches_argument_checks(data):
    with pytest.raises(ValueError, match="^batch_size"):
        E.length_batches(data["validation"], 0, 2, 0)
    with pytest.raises(TypeError, match="^steps"):
        E.length_batches(data["validation"], 4, 2.0, 0)
    with pytest.raises(ValueError, match="^index"):
        data["validation"].batch(torch.tensor([], dtype=torch.int64))


def test_train_classifier_argument_checks(data):
    model = E.build_model("frozen", 0, CFG)
    with pytest.raises(ValueError, match="^method"):
        E.train_classifier(model, "lora", data["train"], 3, 1e-3, 0, CFG)
    with pytest.raises(ValueError, match="^lr"):
        E.train_classifier(model, "frozen", data["train"], 3, 0.0, 0, CFG)
    with pytest.raises(TypeError, match="^model"):
        E.train_classifier(nn.Linear(2, 2), "frozen", data["train"], 3, 1e-3, 0, CFG)


# ------------------------------------------------------------------ the committed record

RECORD = ROOT / "experiments" / "results" / "minilm_supersenses.json"


def test_the_committed_record_is_consistent_with_the_protocol():
    """Chapter 9 reads this file: it must come from FULL's configuration, and its choices,
    summaries and verdicts must follow from its own per-seed numbers."""
    import json

    from lora_edu.toy import SeedStats, compare_seeds

    record = json.loads(RECORD.read_text(encoding="utf-8"))
    assert record["config"] == json.loads(json.dumps(dataclasses.asdict(E.FULL)))
    assert record["command"].endswith("-m experiments.minilm_supersenses --full")
    stats = {}
    for m in E.METHODS:
        grid = [g for g in record["grid"] if g["method"] == m]
        assert [g["lr"] for g in grid] == list(E.FULL.grids[m])
        best = max(grid, key=lambda g: (g["validation"], -g["lr"]))
        assert record["chosen"][m] == {"lr": best["lr"], "validation": best["validation"]}
        runs = record["methods"][m]
        assert sorted(runs["test"]) == [str(s) for s in E.FULL.seeds]
        assert runs["test"]["0"] == best["test"]            # seed 0 is the chosen grid run
        for acc in runs["test"].values():                   # k correct of 600 test texts
            assert abs(acc * 600 - round(acc * 600)) < 1e-9
        stats[m] = SeedStats(tuple(int(s) for s in runs["test"]), tuple(runs["test"].values()))
        assert runs["summary"] == stats[m].fmt()
        assert all(len(curve) == E.FULL.steps for curve in runs["losses"].values())
        assert runs["trainable"] == _hand_trainable(m)
    for pair, verdict in record["verdicts"].items():
        a, b = pair.split(" vs ")
        assert verdict == compare_seeds(stats[a], stats[b], E.FULL.margin)
    for tables in record["methods"]["adalora"]["allocation"].values():
        assert sum(map(sum, tables.values())) == E.FULL.r * 2 * LAYERS
    assert len(record["delta_w"]) == 6 * LAYERS
    assert record["interop"]["logits_rel_diff"] <= 1e-5

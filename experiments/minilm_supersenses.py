"""Chapter 9's full experiment: all-MiniLM-L6-v2 fine-tuned on WordNet noun supersenses.

The protocol, the methods and every function are in :mod:`lora_edu.supersense`; this script runs
:func:`lora_edu.supersense.run_experiment` on its full configuration, adds the
interoperability check with Hugging Face PEFT (``peft`` and ``transformers`` are test-only
requirements of the repository, imported here and never by ``lora_edu``), prints a summary and
writes the whole record — every per-seed number, the grid's validation scores, the chosen
settings, the versions, the command and the date — as JSON. Chapter 9 reads the committed file.

Usage (from the repository root)::

    .venv/bin/python -m experiments.minilm_supersenses --full      # about 40 min on 2 cores
    .venv/bin/python -m experiments.minilm_supersenses --probe     # only the linear probe, added

Both write ``experiments/results/minilm_supersenses.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import lora_edu
from lora_edu.encoder import mean_pool, minilm_encoder
from lora_edu.lora import export_peft, merge_lora
from lora_edu.pretrained import minilm_file
from lora_edu.supersense import (
    FULL,
    RunConfig,
    build_model,
    fit_linear_probe,
    pooled_features,
    run_experiment,
    supersense_splits,
)

__all__ = ["PROBE_WEIGHT_DECAYS", "linear_probe_record", "peft_interop", "main"]

#: The L2 strengths tried for the linear probe (chosen on validation).
PROBE_WEIGHT_DECAYS = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


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

    data = supersense_splits(cfg.max_length)
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


def linear_probe_record(cfg: RunConfig = FULL) -> dict:
    """The frozen floor at its best: a logistic regression on the pretrained sentence embeddings
    (:func:`lora_edu.supersense.fit_linear_probe`, fitted to convergence, no seed involved), its
    L2 strength chosen on the validation split from :data:`PROBE_WEIGHT_DECAYS`."""
    torch.set_num_threads(1)
    data = supersense_splits(cfg.max_length)
    encoder = minilm_encoder()
    feats = {s: pooled_features(encoder, split) for s, split in data.items()}
    rows = []
    for wd in PROBE_WEIGHT_DECAYS:
        W, b = fit_linear_probe(feats["train"], data["train"].labels, 10, wd)
        acc = {s: float(((feats[s] @ W.T + b).argmax(dim=1) == data[s].labels).double().mean())
               for s in ("validation", "test")}
        rows.append({"weight_decay": wd, **acc})
    best = max(rows, key=lambda r: (r["validation"], r["weight_decay"]))   # ties: stronger L2
    return {"grid": rows, "chosen": best}


def _print(record: dict) -> None:
    print(f"{'method':10s} {'lr':>8s} {'val':>6s} {'test: mean ± std [min, max]':32s} "
          f"{'trainable':>10s} {'state MB':>9s} {'s/step':>7s}")
    for m, r in record["methods"].items():
        c = record["chosen"][m]
        print(f"{m:10s} {c['lr']:8.0e} {c['validation']:6.3f} {r['summary']:32s} "
              f"{r['trainable']:10d} {r['bytes']['total'] / 2**20:9.1f} "
              f"{float(np.median(list(r['seconds_per_step'].values()))):7.3f}")
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
    if "linear_probe" in record:
        c = record["linear_probe"]["chosen"]
        print(f"linear probe (frozen floor at its best): weight decay {c['weight_decay']:g}, "
              f"validation {c['validation']:.3f}, test {c['test']:.3f}")
    if "interop" in record:
        print("interop:", record["interop"])
    print(f"wall time {record['wall_seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="the whole experiment (about 40 min)")
    mode.add_argument("--probe", action="store_true",
                      help="(re)compute only the linear probe and add it to the full record")
    parser.add_argument("--workers", type=int, default=2,
                        help="fork worker processes (one thread each)")
    args = parser.parse_args(argv)
    cfg = FULL
    out = Path(__file__).resolve().parent / "results" / "minilm_supersenses.json"
    if args.probe:
        record = json.loads(out.read_text(encoding="utf-8"))
        record["linear_probe"] = linear_probe_record(cfg)
        record["linear_probe_command"] = "python -m experiments.minilm_supersenses --probe"
        _print(record)
        out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"added the linear probe to {out}")
        return 0
    record = run_experiment(cfg, args.workers, keep_state=True)
    record["linear_probe"] = linear_probe_record(cfg)
    state = record.pop("lora_qv_state", None)
    if state is not None:
        with tempfile.TemporaryDirectory() as tmp:
            record["interop"] = peft_interop(cfg, state, Path(tmp))
    record["versions"]["lora_edu"] = lora_edu.__version__
    record["command"] = " ".join(["python", "-m", "experiments.minilm_supersenses",
                                  *(sys.argv[1:] if argv is None else argv)])
    _print(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

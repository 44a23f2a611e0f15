"""Write lora_edu/data/toy_pretrained.npz: the toy transformer pre-trained for seeds 0–4.

Each seed is trained by ``pretrained_toy_model(seed, retrain=True)`` at its default settings
(:func:`lora_edu.toy.default_pretraining`) with one thread, and stored as every tensor of its
state dict (``seed{s}/{name}``, float32) plus the settings (``seed{s}/settings``, JSON). The file
records the CPU kernels and torch version it was made with (``made_with``): training again
elsewhere can differ in the last bits, which 200 AdamW steps amplify (see
``lora_edu.toy.training``). ``--check`` compares a fresh training with the shipped file
instead of writing it (exit status 1 if any tensor differs).

    python scripts/make_toy_pretrained.py            # about 40 s on one core
    python scripts/make_toy_pretrained.py --check
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from lora_edu.toy import (
    SHIPPED_PRETRAINED_SEEDS,
    default_pretraining,
    pretrained_file,
    pretrained_toy_model,
    shipped_pretrained_state,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare a fresh training with the shipped file; write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    differs = []
    for seed in SHIPPED_PRETRAINED_SEEDS:
        model, _ = pretrained_toy_model(seed, retrain=True)
        state = model.state_dict()
        if args.check:
            shipped = shipped_pretrained_state(seed)
            same = shipped is not None and shipped.keys() == state.keys() and all(
                torch.equal(shipped[k], state[k]) for k in state)
            print(f"seed {seed}: {'identical' if same else 'DIFFERS'}")
            differs += [] if same else [seed]
            continue
        for name, tensor in state.items():
            arrays[f"seed{seed}/{name}"] = tensor.detach().numpy()
        arrays[f"seed{seed}/settings"] = np.array(json.dumps(default_pretraining(seed),
                                                             sort_keys=True))
    if args.check:
        return 1 if differs else 0
    arrays["made_with/settings"] = np.array(json.dumps({
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": 1}, sort_keys=True))
    np.savez_compressed(pretrained_file(), **arrays)
    print(f"wrote {pretrained_file()} ({len(SHIPPED_PRETRAINED_SEEDS)} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

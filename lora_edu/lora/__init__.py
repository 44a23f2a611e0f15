"""LoRA: a frozen linear layer plus a trainable low-rank bypass (source §2.1; Hu et al. 2021).

For a frozen weight W0 ∈ ℝ^{d×k} (``nn.Linear(k, d)``: ``weight`` has shape (d, k)) LoRA learns
ΔW = B·A with B ∈ ℝ^{d×r}, A ∈ ℝ^{r×k}, r ≪ min(d, k), and computes

    h = W0·x + b + s·B·(A·x),   s = α / r   (rsLoRA: s = α / √r)

as two skinny matrix products (A first: "降维", down to r; then B: "升维", back up to d), never
by forming the d×k matrix B·A. B starts at zero, so the output equals the base layer's at step 0
(source §2.1 (2)). After training, W0 ← W0 + s·B·A ("合并", merge) gives a plain linear layer with
zero extra inference latency (source §2.2, 2).

In code ``lora_A`` has shape (r, k) and ``lora_B`` shape (d, r) — the document's shapes, and the
weight shapes PEFT uses.

The package's modules: ``layer`` (:class:`LoRALinear`), ``model`` (:func:`apply_lora`,
merging, the A/B state dict), ``adapter_file`` (:func:`save_lora` / :func:`load_lora`) and
``peft_format`` (:func:`export_peft` / :func:`import_peft`). Every public name is imported from
here: ``from lora_edu.lora import LoRALinear, apply_lora, save_lora``.

Reuse of a trained adapter ("仅存小矩阵A/B", source §2.2, 1):

* :func:`save_lora` / :func:`load_lora` — this library's adapter file: every trainable tensor (the
  A/B matrices and, e.g., a new classifier head) plus the configuration (:func:`adapter_config`),
  checked against the model on loading;
* :func:`export_peft` / :func:`import_peft` — the same adapter in the directory layout of Hugging
  Face PEFT (``adapter_config.json`` + ``adapter_model.safetensors``), which
  ``peft.PeftModel.from_pretrained`` loads.
"""

from lora_edu.lora.adapter_file import (
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    adapter_config,
    load_lora,
    save_lora,
)
from lora_edu.lora.layer import INITS, LoRALinear, check_lora_hparams, check_rank_fits, init_lora_A
from lora_edu.lora.model import (
    apply_lora,
    load_lora_state_dict,
    lora_layers,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
)
from lora_edu.lora.peft_format import export_peft, import_peft

__all__ = [


    "LoRALinear", "INITS", "check_lora_hparams", "check_rank_fits", "init_lora_A",
    "apply_lora", "merge_lora", "unmerge_lora", "lora_layers", "lora_state_dict",
    "load_lora_state_dict",
    "adapter_config", "save_lora", "load_lora", "ADAPTER_FORMAT", "ADAPTER_FORMAT_VERSION",
    "export_peft", "import_peft",
]

"""lora_edu: the reference implementations behind the lora-edu book.

One module per concept (see the README's chapter map)::

    from lora_edu.lowrank import best_rank_r        # chapter 1
    from lora_edu.reproducibility import seed_everything

Basic modules (low-rank, quantization) never import composite ones (QLoRA, AdaLoRA).
"""

from lora_edu.reproducibility import seed_everything

__all__ = ["seed_everything", "__version__"]
__version__ = "0.1.0"

"""AdaLoRA (chapter 7, source §3): the SVD-form adapter ΔW = PΛQ with its orthogonal
regulariser, element importance (smoothed sensitivity × uncertainty), triplet scores, the cubic
budget schedule, and the allocator that keeps the best b(t) triplets.

Everything public is imported from here::

    from lora_edu.adalora import SVDLinear, apply_adalora, RankAllocator, merge_adalora

The modules behind it: ``svd_linear``, ``importance``, ``budget``, ``allocator``.
"""

from lora_edu.adalora.allocator import RankAllocator, find_svd_modules, is_svd_adapter
from lora_edu.adalora.budget import budget_from_average_rank, budget_schedule, validate_schedule
from lora_edu.adalora.importance import (
    ImportanceTracker,
    ema_update,
    sensitivity,
    triplet_scores,
)
from lora_edu.adalora.svd_linear import (
    SVDLinear,
    apply_adalora,
    merge_adalora,
    orthogonal_penalty,
    orthogonal_regularizer,
)

__all__ = [
    "SVDLinear", "apply_adalora", "merge_adalora", "orthogonal_regularizer", "orthogonal_penalty",
    "ImportanceTracker", "sensitivity", "ema_update", "triplet_scores",
    "budget_schedule", "validate_schedule", "budget_from_average_rank",
    "RankAllocator", "find_svd_modules", "is_svd_adapter",
]

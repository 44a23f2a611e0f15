"""Checkers for coursework: a student's own version of a core function of the book, compared with
the library on random and edge cases, with a readable report that names the typical mistake.

Each checker takes the student's function (its signature is fixed and documented in the
checker's docstring) and a ``seed``, and returns a :class:`Report`::

    from lora_edu.grading import check_lora_forward

    def lora_forward(x, W0, A, B, alpha, r):
        return x @ W0.T + (alpha / r) * (x @ A.T) @ B.T

    report = check_lora_forward(lora_forward)
    print(report)               # ✓/✗, then per failure: case, expected, got, hint
    report.raise_if_failed()    # AssertionError(str(report)) if anything failed

On a difference the checker computes the typical wrong variants itself (scale forgotten, B·A
transposed, the r smallest singular values, …) and names the one the student's result equals;
each hint is a constant of this package (``HINT_*``). A function that raises is reported as a
failure with the exception as "got", never as a crash of the checker.

The checkers, by chapter of the book (source sections of *LoRA方法详解*):

* chapter 1 (source §2.1): :func:`check_rank_r_truncation`;
* chapter 2 (source §2.1, §2.2): :func:`check_lora_init`, :func:`check_lora_forward`,
  :func:`check_lora_merge`;
* chapter 4 (source §4.2 (1)): :func:`check_nf4_code`, :func:`check_blockwise_quantize`;
* chapter 5 (source §4.2 (2)): :func:`check_dq_overhead`;
* chapter 7 (source §3.2 (2)): :func:`check_importance_ema`, :func:`check_triplet_score`,
  :func:`check_budget_schedule`.

A composite module: it imports the library's implementations (``lora``, ``lowrank``, ``quant``,
``adalora``) and nothing imports it. Arguments are validated with :mod:`lora_edu.checks`: a
student function that is not callable raises ``TypeError``, a bad seed ``TypeError`` or
``ValueError``. Every checker is deterministic for a seed and leaves torch's global random
state alone (its cases come from its own ``torch.Generator``).
"""

from lora_edu.grading.adalora_checks import (
    HINT_BUDGET_BOUNDARY,
    HINT_BUDGET_INT,
    HINT_BUDGET_LINEAR,
    HINT_BUDGET_PROGRESS_CUBED,
    HINT_BUDGET_ROUNDING,
    HINT_EMA_BETA_SWAPPED,
    HINT_EMA_BETAS_EXCHANGED,
    HINT_EMA_IN_PLACE,
    HINT_EMA_NO_ABS,
    HINT_EMA_OLD_IBAR,
    HINT_TRIPLET_AXES,
    HINT_TRIPLET_NO_LAMBDA,
    HINT_TRIPLET_SUM,
    check_budget_schedule,
    check_importance_ema,
    check_triplet_score,
)
from lora_edu.grading.core import (
    HINT_DTYPE,
    HINT_INPUT_MODIFIED,
    HINT_NOT_IMPLEMENTED,
    HINT_RAISED,
    HINT_RETURN_TYPE,
    HINT_SHAPE,
    HINT_UNRECOGNISED,
    MAX_LISTED_PER_HINT,
    Failure,
    Report,
)
from lora_edu.grading.lora_checks import (
    HINT_FORWARD_NO_BASE,
    HINT_FORWARD_ORDER,
    HINT_INIT_A_CONSTANT,
    HINT_INIT_B_NOT_ZERO,
    HINT_INIT_BOTH_ZERO,
    HINT_INIT_GENERATOR,
    HINT_INIT_ORDER,
    HINT_INIT_SHAPES,
    HINT_INIT_SWAPPED,
    HINT_MERGE_DELTA_ONLY,
    HINT_MERGE_IN_PLACE,
    HINT_MERGE_ORDER,
    HINT_RANK_FACTORS,
    HINT_RANK_NOT_BEST,
    HINT_RANK_OFF_BY_ONE,
    HINT_RANK_SMALLEST,
    HINT_RANK_TOO_HIGH,
    HINT_SCALE_ALPHA,
    HINT_SCALE_INVERTED,
    HINT_SCALE_MISSING,
    check_lora_forward,
    check_lora_init,
    check_lora_merge,
    check_rank_r_truncation,
)
from lora_edu.grading.quant_checks import (
    HINT_BLOCK_GLOBAL_ABSMAX,
    HINT_BLOCK_MAX_NOT_ABS,
    HINT_BLOCK_NEAREST,
    HINT_BLOCK_PARTIAL,
    HINT_BLOCK_ZERO_DIVISION,
    HINT_DEQUANT_SCALE,
    HINT_DQ_B2_ONLY,
    HINT_DQ_BYTES,
    HINT_DQ_CODE_BITS_MISSING,
    HINT_DQ_FRACTION,
    HINT_DQ_SECOND_LEVEL_MISSING,
    HINT_DQ_WITHOUT_DQ,
    HINT_NF4_EQ4_LITERAL,
    HINT_NF4_LEVEL_COUNT,
    HINT_NF4_MIRRORED,
    HINT_NF4_NO_OFFSET,
    HINT_NF4_NOT_NORMALIZED,
    HINT_NF4_SYMMETRIC,
    HINT_NF4_UNSORTED,
    NF4_TOLERANCE,
    TIE_TOLERANCE,
    check_blockwise_quantize,
    check_dq_overhead,
    check_nf4_code,
)

__all__ = [
    # the report
    "Report", "Failure", "MAX_LISTED_PER_HINT",
    # the checkers
    "check_rank_r_truncation", "check_lora_init", "check_lora_forward", "check_lora_merge",
    "check_nf4_code", "check_blockwise_quantize", "check_dq_overhead",
    "check_importance_ema", "check_triplet_score", "check_budget_schedule",
    "NF4_TOLERANCE", "TIE_TOLERANCE",
    # hints shared by every checker
    "HINT_NOT_IMPLEMENTED", "HINT_RAISED", "HINT_RETURN_TYPE", "HINT_SHAPE", "HINT_DTYPE",
    "HINT_INPUT_MODIFIED", "HINT_UNRECOGNISED",
    # chapters 1 and 2
    "HINT_SCALE_MISSING", "HINT_SCALE_ALPHA", "HINT_SCALE_INVERTED", "HINT_FORWARD_NO_BASE",
    "HINT_FORWARD_ORDER", "HINT_MERGE_ORDER", "HINT_MERGE_DELTA_ONLY", "HINT_MERGE_IN_PLACE",
    "HINT_INIT_SWAPPED", "HINT_INIT_BOTH_ZERO", "HINT_INIT_B_NOT_ZERO", "HINT_INIT_A_CONSTANT",
    "HINT_INIT_SHAPES", "HINT_INIT_ORDER", "HINT_INIT_GENERATOR",
    "HINT_RANK_SMALLEST", "HINT_RANK_OFF_BY_ONE", "HINT_RANK_FACTORS", "HINT_RANK_TOO_HIGH",
    "HINT_RANK_NOT_BEST",
    # chapters 4 and 5
    "HINT_NF4_NO_OFFSET", "HINT_NF4_EQ4_LITERAL", "HINT_NF4_SYMMETRIC", "HINT_NF4_MIRRORED",
    "HINT_NF4_LEVEL_COUNT", "HINT_NF4_NOT_NORMALIZED", "HINT_NF4_UNSORTED",
    "HINT_BLOCK_GLOBAL_ABSMAX", "HINT_BLOCK_MAX_NOT_ABS", "HINT_BLOCK_NEAREST",
    "HINT_BLOCK_PARTIAL", "HINT_BLOCK_ZERO_DIVISION", "HINT_DEQUANT_SCALE",
    "HINT_DQ_FRACTION", "HINT_DQ_WITHOUT_DQ", "HINT_DQ_SECOND_LEVEL_MISSING",
    "HINT_DQ_CODE_BITS_MISSING", "HINT_DQ_B2_ONLY", "HINT_DQ_BYTES",
    # chapter 7
    "HINT_EMA_BETA_SWAPPED", "HINT_EMA_BETAS_EXCHANGED", "HINT_EMA_OLD_IBAR", "HINT_EMA_NO_ABS",
    "HINT_EMA_IN_PLACE", "HINT_TRIPLET_SUM", "HINT_TRIPLET_AXES", "HINT_TRIPLET_NO_LAMBDA",
    "HINT_BUDGET_ROUNDING", "HINT_BUDGET_LINEAR", "HINT_BUDGET_PROGRESS_CUBED",
    "HINT_BUDGET_BOUNDARY", "HINT_BUDGET_INT",
]

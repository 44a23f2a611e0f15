"""AdaLoRA's global budget scheduler: warm-up, cubic decay, final fine-tuning (source §3.2 (2)).

Source §3.2 (2), 全局预算调度器: **热身** (warm-up) at a high initial budget to explore which
parameters matter, **裁剪** (pruning) along a cubic curve down to the target, **微调** (final
fine-tuning) at a fixed budget. The budget is counted in *triplets* (P_{m,i}, λ_{m,i}, Q_{m,i}) over
all adapted matrices together — one triplet is one unit of rank somewhere in the model.

With b(0) the initial and b(T) the target budget, T the total number of steps, t_i the warm-up
length and t_f the length of the final phase (a **duration**, not a step index)::

    b(t) = b(0)                                                        t <= t_i
    b(t) = ⌊ b(T) + (b(0) − b(T)) · (1 − (t − t_i) / (T − t_i − t_f))³ ⌋    t_i < t < T − t_f
    b(t) = b(T)                                                        t >= T − t_f

The AdaLoRA paper's appendix prints the numerator with an extra −t_f; both public
implementations (the authors' ``loralib`` and PEFT) use the form above, and so does this module.
The cubic term is evaluated in exact integer arithmetic, so ⌊·⌋ never suffers from rounding.

PEFT's ``target_r`` is an *average rank per adapted matrix*; the budget here is a total, so
``target_budget = target_r × (number of adapted matrices)`` (:func:`budget_from_average_rank`).
"""

from __future__ import annotations

from lora_edu.checks import check_int

__all__ = ["budget_schedule", "validate_schedule", "budget_from_average_rank"]


def validate_schedule(total_steps: int, init_budget: int, target_budget: int, t_init: int,
                      t_final: int) -> tuple[int, int, int, int, int]:
    """Raise ``ValueError``/``TypeError`` naming the argument if the schedule is invalid.

    Requirements: ``total_steps >= 1``; ``1 <= target_budget <= init_budget``;
    ``t_init, t_final >= 0`` and ``t_init + t_final < total_steps`` (otherwise the cubic phase
    has no length and its denominator T − t_i − t_f is not positive). numpy integers are accepted;
    returns the five values as Python ints, in the order of the arguments.
    """
    total_steps = check_int("total_steps", total_steps, 1)
    init_budget = check_int("init_budget", init_budget, 1)
    target_budget = check_int("target_budget", target_budget, 1)
    t_init = check_int("t_init", t_init, 0)
    t_final = check_int("t_final", t_final, 0)
    if target_budget > init_budget:
        raise ValueError(f"target_budget ({target_budget}) must be <= init_budget "
                         f"({init_budget}): the schedule only removes triplets")
    if t_init + t_final >= total_steps:
        raise ValueError(f"t_init + t_final ({t_init} + {t_final}) must be < total_steps "
                         f"({total_steps}); t_final is a duration, not a step index")
    return total_steps, init_budget, target_budget, t_init, t_final


def budget_schedule(step: int, total_steps: int, init_budget: int, target_budget: int,
                    t_init: int, t_final: int) -> int:
    """Budget b(t) (number of active triplets) at training step ``step`` (source §3.2 (2)).

    ``b(0)`` while ``step <= t_init``, then
    ``⌊b(T) + (b(0) − b(T))·(1 − (t − t_init)/(T − t_init − t_final))³⌋``, and ``b(T)`` from
    ``T − t_final`` on (for the last ``t_final`` steps). Example: b(0) = 36, b(T) = 24,
    t_init = 10, t_final = 20, T = 100 gives 35, 31, 26, 24 at steps 11, 20, 40, 60.

    Parameters
    ----------
    step:
        Training step t in ``[0, total_steps]``.
    total_steps:
        T, the total number of training steps.
    init_budget, target_budget:
        b(0) and b(T), in triplets over all adapted matrices.
    t_init, t_final:
        Lengths (numbers of steps) of the warm-up and of the final phase.

    Raises
    ------
    ValueError
        Invalid schedule (see :func:`validate_schedule`) or ``step`` outside ``[0, T]``.
    """
    total_steps, init_budget, target_budget, t_init, t_final = validate_schedule(
        total_steps, init_budget, target_budget, t_init, t_final)
    step = check_int("step", step, 0, total_steps)
    if step <= t_init:
        return init_budget
    decay_len = total_steps - t_init - t_final
    remaining = decay_len - (step - t_init)      # (1 − (t − t_i)/L) · L
    if remaining <= 0:
        return target_budget
    # exact floor of b(T) + (b0 − bT)·(remaining/L)³ in integers
    return target_budget + ((init_budget - target_budget) * remaining ** 3) // decay_len ** 3


def budget_from_average_rank(average_rank: int, n_matrices: int) -> int:
    """Total budget in triplets for an average rank per matrix (PEFT's ``target_r``/``init_r``).

    ``budget = average_rank × n_matrices``; e.g. ``target_r = 8`` over 12 layers × 6 matrices is a
    budget of 576 triplets, which the allocator may spread unevenly.
    """
    return check_int("average_rank", average_rank, 1) * check_int("n_matrices", n_matrices, 1)

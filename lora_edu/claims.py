"""The claims ledger: every checkable statement of the source note, and what this book found.

The source, *LoRA方法详解* ("LoRA explained"), is a short Chinese note on LoRA, AdaLoRA and QLoRA.
Each numbered or checkable statement in it is one :class:`Claim`: the words of the note (Chinese)
and an English rendering, where the statement comes from (paper, section, table), the chapters and
tests of this book that check it, the value computed or measured here, and a verdict — one of
:data:`VERDICTS`. The ledger chapter renders :data:`CLAIMS` as a table; a test checks that every
named test exists and every named chapter is in the table of contents.

Verdicts:

* ``exact`` — an identity or an exact computation, checked digit for digit;
* ``reproduced at toy scale`` — measured on the book's toy models over several seeds, with the
  same direction as the claim (a toy cannot show that it holds at 175B);
* ``partly holds`` — true with a qualification (a rounding, a range, a condition), stated;
* ``does not hold`` — at the scale measured here the opposite or no effect was found, with numbers;
* ``not checkable on a CPU`` — needs a GPU or a large model; the reason is given.

This module holds data; it imports only :mod:`lora_edu.checks`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lora_edu.checks import check_instance

__all__ = ["VERDICTS", "Claim", "CLAIMS", "verdict_counts"]

#: The five verdicts, from strongest to weakest evidence.
VERDICTS = ("exact", "reproduced at toy scale", "partly holds", "does not hold",
            "not checkable on a CPU")


@dataclass(frozen=True)
class Claim:
    """One statement of the source note and what the book found about it.

    ``section`` is the note's section ("§2.2 (1)"); ``zh`` the note's words; ``en`` an English
    rendering; ``origin`` the paper and place the statement comes from; ``chapters`` toc entries
    (``"book/02_lora"``); ``tests`` pytest ids (``"tests/test_memory.py::test_checkpoint_sizes"``);
    ``value`` what was computed or measured here; ``verdict`` one of :data:`VERDICTS`; ``why`` the
    qualification or reason behind the verdict.
    """

    key: str
    section: str
    zh: str
    en: str
    origin: str
    chapters: tuple[str, ...]
    tests: tuple[str, ...]
    value: str
    verdict: str
    why: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not self.key or not self.zh or not self.en:
            raise ValueError("key, zh and en must be non-empty")


_LORA = "Hu et al. 2021 (LoRA)"
_ADA = "Zhang et al. 2023 (AdaLoRA)"
_QLORA = "Dettmers et al. 2023 (QLoRA)"

#: The ledger, in the order of the note.
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "adapter-latency", "§1",
        "Adapter有推理延迟",
        "Adapters add inference latency.",
        f"{_LORA}, §3 and Table 1 (Adapter^H +30.3 % at batch 1 × 128 tokens, +3.0 % at 32 × 512)",
        ("book/08_comparison",),
        ("tests/test_adapter.py::test_forward_is_the_formula_written_out",),
        "toy, batch 1 × 16 tokens: Houlsby adapters +17–31 % over the base (4.4 % more "
        "multiply-adds); at GPT-2-medium width on a CPU (benchmark) about +1 %",
        "partly holds",
        "Adapters add latency wherever a per-operation cost dominates (the toy; a GPU at batch 1); "
        "at full width on a CPU the extra is about 1 %, below the paper's +30 % on a GPU."),
    Claim(
        "prompt-tuning", "§1",
        "Prompt Tuning优化难/占输入长度",
        "Prompt tuning is hard to optimise and uses up input length.",
        f"{_LORA}, §3 and §7 (prefix tuning's accuracy drops with many special tokens)",
        (), (), "not measured", "not checkable on a CPU",
        "Not a CPU limit: prompt and prefix tuning are outside this book."),
    Claim(
        "low-intrinsic-rank", "§2.1",
        "大模型微调时的权重更新矩阵ΔW具有低内在秩",
        "The weight update ΔW of fine-tuning has a low intrinsic rank.",
        f"{_LORA}, §4.1 (after Aghajanyan et al. 2020)",
        ("book/01_low_rank",),
        ("tests/test_lowrank.py::test_frobenius_error_equals_tail_of_singular_values",),
        "toy ΔW (128×128): 90 % of its energy in 7 directions (random matrix: 65–66); its rank-8 "
        "truncation keeps 0.982 ± 0.009 of the accuracy gained (5 seeds)",
        "reproduced at toy scale"),
    Claim(
        "forward", "§2.1 (1)",
        "h = W₀·x + s·(B·A)·x（s为缩放因子，通常α/r）",
        "h = W0·x + s·(B·A)·x, with scale s, usually α/r.",
        f"{_LORA}, §4.1",
        ("book/02_lora",),
        ("tests/test_lora.py::test_delta_weight_bypass_and_merge_match_a_dense_loop",),
        "LoRALinear's output equals W0·x + s·B·A·x entry by entry (float64, to 1e-12)", "exact"),
    Claim(
        "init", "§2.1 (2)",
        "A高斯随机初始化，B全零初始化（训练初期旁路输出为0）",
        "A starts Gaussian, B starts at zero, so the bypass outputs 0 at the start.",
        f"{_LORA}, §4.1",
        ("book/02_lora",), ("tests/test_lora.py::test_output_equals_base_at_init_exactly",),
        "output equals the base layer bit for bit at initialisation (both inits)", "exact",
        "The paper says 'random Gaussian' without σ; loralib and PEFT default to a uniform "
        "(kaiming) A — chapter 2 compares both."),
    Claim(
        "params", "§2.1 (3)",
        "可训练参数从d×k降至d×r + r×k",
        "Trainable parameters drop from d×k to d×r + r×k.",
        f"{_LORA}, §4.1",
        ("book/01_low_rank", "book/02_lora"),
        ("tests/test_lowrank.py::test_parameter_counts_of_document_ranks",
         "tests/test_memory.py::test_gpt3_trainable_parameter_counts"),
        "4096×4096: 1/256 of d·k at r = 8; GPT-3 175B, W_q, W_v, r = 4: 18,874,368", "exact"),
    Claim(
        "fraction", "§2.1 (3)",
        "r取8/16/64，仅为全量微调的千分之一/万分之一",
        "With r = 8/16/64 this is 1/1000 to 1/10000 of full fine-tuning.",
        f"{_LORA}, Table 4 (GPT-3 175B)",
        ("book/02_lora",), ("tests/test_memory.py::test_fractions_of_full_fine_tuning",),
        "GPT-3 175B, W_q, W_v: r = 8 → 1/4,643, r = 16 → 1/2,321, r = 64 → 1/580",
        "partly holds",
        "Inside the range for r = 8 and 16 on a 175B model; not for r = 64, for four matrices, or "
        "for small models (the toy: about 3 %)."),
    Claim(
        "checkpoint", "§2.2 (1)",
        "仅存小矩阵A/B，checkpoint体积缩10000倍",
        "Only the small A/B are stored: the checkpoint is 10,000× smaller.",
        f"{_LORA}, §4.2 (350 GB → 35 MB)",
        ("book/02_lora",),
        ("tests/test_memory.py::test_checkpoint_sizes",
         "tests/test_memory.py::test_reduction_factor_is_9285_not_10000"),
        "350.5 GB / 37.7 MB = 9,285×", "partly holds",
        "10,000× is the rounded 9,285×; the paper's 35 MB is 37.7 MB (36.0 MiB)."),
    Claim(
        "vram", "§2.2 (1)",
        "训练显存省2/3",
        "Training memory is cut by 2/3.",
        f"{_LORA}, §4.2 (1.2 TB → 350 GB)",
        ("book/02_lora",), ("tests/test_memory.py::test_paper_memory_and_speed_figures",),
        "1 − 350 GB / 1.2 TB = 70.8 %; a simple Adam model gives 83.3 %", "partly holds",
        "The paper's measurement, not derivable from stated inputs; '2/3' rounds 70.8 % down."),
    Claim(
        "speed", "§2.2 (1)",
        "速度提25%",
        "Training is 25 % faster.",
        f"{_LORA}, §4.2 (32.5 → 43.1 tokens/s per V100)",
        ("book/02_lora",), ("tests/test_memory.py::test_paper_memory_and_speed_figures",),
        "throughput +32.6 %, time per token −24.6 %", "partly holds",
        "'25 %' matches the time saved per token; the throughput gain is 32.6 %. On the toy, "
        "a LoRA step is measured faster than a full step (benchmarks)."),
    Claim(
        "merge", "§2.2 (2)",
        "训练后可将ΔW合并回W₀，网络结构与原模型一致（零推理延迟）",
        "After training ΔW merges into W0: same architecture, zero inference latency.",
        f"{_LORA}, §4.1",
        ("book/02_lora", "book/08_comparison"),
        ("tests/test_lora.py::test_merge_lora_gives_plain_linears_and_same_output",),
        "merged model = plain nn.Linear layers, logits within 1e-5 relative; merged / base "
        "latency ≈ 1 (benchmarks)", "exact"),
    Claim(
        "quality", "§2.2 (3)",
        "直接修改权重，效果接近全量微调",
        "Modifying the weights directly comes close to full fine-tuning.",
        f"{_LORA}, Tables 2–4",
        ("book/02_lora",), ("tests/test_lora.py::test_only_lora_parameters_get_gradients",),
        "toy, 3 seeds: LoRA q,v r = 4 0.996 ± 0.008 of full fine-tuning's 1.000 (frozen body "
        "0.247 ± 0.014)", "reproduced at toy scale"),
    Claim(
        "no-virtual-tokens", "§2.2 (3)",
        "无virtual token，适配长文本任务",
        "No virtual tokens: the input length is not used up.",
        f"{_LORA}, §3",
        ("book/02_lora",),
        ("tests/test_lora.py::test_merge_lora_gives_plain_linears_and_same_output",),
        "a LoRA model takes the same (batch, seq) input as the base model", "exact",
        "True by construction; prefix/prompt tuning is not implemented here for a comparison."),
    Claim(
        "composable", "§2.2 (4)",
        "可与Prefix-Tuning等PEFT方法结合",
        "LoRA can be combined with other PEFT methods such as prefix tuning.",
        f"{_LORA}, §3 and Appendix E",
        (), (), "not measured", "not checkable on a CPU",
        "Not a CPU limit: prefix tuning is outside this book, so no combination was built."),
    Claim(
        "wq-wv", "§2.3 (1)",
        "尤其W_q+W_v组合效果最优",
        "Among the attention matrices, W_q + W_v works best.",
        f"{_LORA}, Table 5",
        ("book/03_where_and_rank",),
        ("tests/test_placement.py::test_the_seven_placements_of_table_5",),
        "toy, budget 2,048, 40 steps, 3 seeds: W_q, W_v 0.829 ± 0.108, the highest mean of the "
        "seven placements, above W_q (0.359) and W_o (0.392) alone; W_q, W_k, W_v, W_o "
        "0.698 ± 0.192",
        "partly holds",
        "Within noise of all four matrices (as in the paper's own Table 5) and of some single "
        "matrices; full fine-tuning 0.962 ± 0.047."),
    Claim(
        "small-r", "§2.3 (2)",
        "小r（1/2/4/8）即可达优效，盲目增大r会增参数量甚至降性能",
        "A small r (1/2/4/8) suffices; a larger r adds parameters and can even hurt.",
        f"{_LORA}, Table 6",
        ("book/03_where_and_rank",),
        ("tests/test_placement.py::test_fixed_budget_configurations_have_equal_parameter_counts",),
        "W_q, W_v at r = 1, 2, 4, 8, 64: 0.642, 0.755, 0.829, 0.842, 0.890 (means); every pair of "
        "neighbouring ranks within noise; ΔW at r = 64 holds 90 % of its energy in 2–4 directions",
        "partly holds",
        "Small r is close to the best, but a larger r did not hurt on the toy."),
    Claim(
        "amplify", "§2.3 (3)",
        "ΔW学习预训练中未充分强调、但对下游任务关键的“隐藏特征”",
        "ΔW amplifies features that pre-training learned but did not emphasise.",
        f"{_LORA}, §7.3 (amplification 21.5 at r = 4, 1.9 at r = 64)",
        ("book/03_where_and_rank",),
        ("tests/test_lowrank_subspace.py::test_amplification_is_the_ratio_of_two_norms",),
        "amplification 14–128 at r = 4, 3.1–10.8 at r = 64 (paper: 21.5 and 1.9); ΔW holds on "
        "average 0.17 of what W's own top directions hold",
        "partly holds",
        "Same direction as the paper (ΔW avoids W's top directions, the factor falls with r), but "
        "the toy's ΔW is larger than W itself, so the factor mostly measures its size."),
    Claim(
        "fixed-rank", "§3.1",
        "原始LoRA秩r固定、仅聚焦注意力模块，未考虑不同任务/层/矩阵的“可塑性”差异",
        "LoRA fixes one r for every matrix and adapts attention only, ignoring that layers and "
        "matrices differ.",
        f"{_ADA}, §1 and Figure 1",
        ("book/07_adalora",), ("tests/test_adalora.py::test_final_pattern_frozen",),
        "AdaLoRA's final ranks differ between matrices in every toy run (chapter 7)",
        "partly holds",
        "A description of LoRA's design (the rank is a choice, the placement too); that the "
        "matrices *need* different ranks is what AdaLoRA tests, and the toy did not show a gain."),
    Claim(
        "svd-form", "§3.2 (1)",
        "ΔW = PΛQ，无需真实SVD分解，加正交正则项保证稳定性",
        "ΔW = PΛQ, trained without computing an SVD, with an orthogonality regulariser.",
        f"{_ADA}, §3.1",
        ("book/07_adalora",),
        ("tests/test_adalora.py::test_forward_is_P_diag_lambda_Q",
         "tests/test_adalora.py::test_regularizer_by_hand"),
        "forward = W0·x + s·P·diag(λ)·Q·x; with γ = 0.1 PᵀP and QQᵀ stay near I, with γ = 0 "
        "they drift (chapter 7 figure)", "exact"),
    Claim(
        "importance", "§3.2 (2)",
        "s(w) = 平滑后敏感度 × 平滑后不确定性",
        "Importance = smoothed sensitivity |w·∇w L| × smoothed uncertainty.",
        f"{_ADA}, §3.2, Eq. 8–11",
        ("book/07_adalora",),
        ("tests/test_adalora_importance.py::test_uncertainty_uses_updated_mean_by_hand",
         "tests/test_adalora_importance.py::test_triplet_score_constructed"),
        "EMAs and triplet scores equal a hand computation", "exact"),
    Claim(
        "prune", "§3.2 (2)",
        "按分数排序裁剪低重要性三元组，实现参数动态分配",
        "Triplets are ranked by score and the least important are pruned: the budget moves.",
        f"{_ADA}, §3.2, Eq. 7",
        ("book/07_adalora",),
        ("tests/test_adalora.py::test_keeps_the_top_scores",
         "tests/test_adalora.py::test_masks_held_between_steps_use_exactly_the_reported_budget"),
        "exactly b(t) triplets kept, the top scores; with masks held every forward uses exactly "
        "the reported budget", "exact"),
    Claim(
        "schedule", "§3.2 (3)",
        "热身…按三次方曲线降预算至目标值…固定预算",
        "Warm-up at a high budget, cubic decrease to the target, then a fixed budget.",
        f"{_ADA}, §3.3, Eq. 12",
        ("book/07_adalora",), ("tests/test_adalora_schedule.py::test_worked_example",),
        "schedule 36 → 24 over T = 100 equals an exact Fraction closed form", "exact"),
    Claim(
        "ffn-top", "§3.3",
        "自动为FFN模块、模型高层分配更高秩",
        "AdaLoRA gives more rank to the FFN and to the top layers.",
        f"{_ADA}, Figure 1 (DeBERTaV3-base)",
        ("book/07_adalora",), ("tests/test_adalora.py::test_keeps_the_top_scores",),
        "toy, 3 seeds: attention took (nearly) the whole budget, more in the bottom layer than the "
        "top", "does not hold",
        "At toy scale (2 layers, one task) the opposite pattern; the paper's is for "
        "DeBERTa on GLUE."),
    Claim(
        "beats-lora", "§3.3",
        "相同参数预算下性能优于原始LoRA",
        "At the same parameter budget AdaLoRA beats LoRA.",
        f"{_ADA}, Tables 1–2",
        ("book/07_adalora",),
        ("tests/test_adalora.py::test_nonzero_lambda_follow_the_cubic_schedule_by_hand",),
        "toy, 3 seeds: AdaLoRA 0.903 ± 0.086 vs LoRA W_q, W_v r = 6 0.949 ± 0.051", "does not hold",
        "Within noise at toy scale; LoRA at AdaLoRA's starting budget was the most reliable."),
    Claim(
        "svd-alone", "§3.3",
        "仅替换SVD参数化形式也能提效",
        "Replacing the parameterisation by the SVD form alone already helps.",
        f"{_ADA}, Table 4 (SVD-LoRA)",
        ("book/07_adalora",), ("tests/test_adalora.py::test_output_equals_base_at_init",),
        "toy, 3 seeds: SVD-only 0.565 ± 0.133, below LoRA", "does not hold",
        "On the toy the SVD form learns more slowly (λ starts at 0) and needs a larger scale."),
    Claim(
        "65b-48gb", "§4.1",
        "实现大模型（如65B）单卡（48GB）微调",
        "A 65B model fine-tunes on one 48 GB GPU.",
        f"{_QLORA}, §1 and §3",
        ("book/06_qlora",), ("tests/test_memory_qlora.py::test_65b_base_and_qlora_budget",),
        "calculator: LLaMA-65B QLoRA step (r = 64, 1 × 512 tokens, checkpointing) 45.4 GB < 48 GB; "
        "the base 65e9 × (4 + 65/512)/8 = 33.5 GB; full 16-bit fine-tuning with Adam 780 GB",
        "partly holds",
        "A memory calculation, not a run: a 65B model does not fit a CPU session. The paper's 7B "
        "base figure (5,048 MB) does not reproduce from the tensors (3,866 MB)."),
    Claim(
        "close-to-16bit", "§4.1",
        "性能接近16-bit全量微调",
        "Quality close to 16-bit full fine-tuning.",
        f"{_QLORA}, Tables 3–4",
        ("book/06_qlora",),
        ("tests/test_qlora.py::test_output_equals_lora_on_the_dequantized_weight",),
        "toy, 5 seeds: LoRA on a float32 base 0.998 ± 0.004, QLoRA on an NF4 + DQ base "
        "0.998 ± 0.002 (within noise)",
        "reproduced at toy scale",
        "Against LoRA on a 32-bit base, not full 16-bit fine-tuning of a large model."),
    Claim(
        "nf4-quantiles", "§4.2 (1)",
        "基于分位数量化（每个量化桶包含等数量值），先归一化权重到[-1,1]，再映射到16个NF4分位数点",
        "NF4: quantile quantization (equal counts per bucket), weights normalised to [-1, 1], "
        "mapped to 16 NF4 levels.",
        f"{_QLORA}, §3 and Appendix E",
        ("book/04_nf4",),
        ("tests/test_quant_codes.py::test_nf4_equals_published_table_bit_for_bit",
         "tests/test_quant_codes.py::test_equal_mass_at_the_offset_scale"),
        "the 16 levels reproduce QLoRA's table bit for bit; bins have equal N(0,1) mass at the "
        "offset scale", "exact",
        "Equal counts hold for N(0,1) at the offset scale, not for absmax-normalised blocks."),
    Claim(
        "nf4-better", "§4.2 (1)",
        "精度远优于传统4-bit量化",
        "NF4 is far more accurate than traditional 4-bit quantization.",
        f"{_QLORA}, Figure 3 and Table 2",
        ("book/04_nf4",),
        ("tests/test_nf4.py::test_lloyd_max_beats_nf4_blockwise_at_64_and_expected_range",),
        "Gaussian data: about 27 % less MSE than Int4 at B = 64; MiniLM-L6: beats FP4 and Int4 on "
        "all 36 matrices", "partly holds",
        "'Optimal' does not hold: a fitted Lloyd code is 8–15 % better in MSE; on uniform "
        "nn.Linear initial weights NF4 loses to Int4."),
    Claim(
        "dq", "§4.2 (2)",
        "对量化常数（32-bit）再做8-bit量化，将额外开销从0.5bit/参数降至0.127bit/参数",
        "Double quantization stores the 32-bit constants in 8 bits: overhead 0.5 → 0.127 bit "
        "per parameter.",
        f"{_QLORA}, §3 (Double Quantization)",
        ("book/05_double_quant",),
        ("tests/test_double_quant.py::test_document_fractions_exact",
         "tests/test_double_quant.py::test_measured_storage_4096x4096_equals_formula"),
        "32/64 = 0.5 → 8/64 + 32/(64·256) = 65/512 = 0.126953125 bit; measured from stored bytes",
        "exact"),
    Claim(
        "paged", "§4.2 (3)",
        "显存不足时将优化器状态分页到CPU，避免OOM",
        "Paged optimizers move optimizer state to CPU memory when the GPU runs short, avoiding "
        "out-of-memory errors.",
        f"{_QLORA}, §3 (Paged Optimizers)",
        ("book/06_qlora",),
        ("tests/test_paged.py::test_without_paging_a_spike_is_out_of_memory",
         "tests/test_paged.py::test_matches_torch_adamw_exactly"),
        "a batch twice as long at step 10: out of memory without paging; with it 65 pages out and "
        "back, updates identical to torch.optim.AdamW",
        "reproduced at toy scale",
        "A model of the paging policy on CPU tensors; CUDA unified memory itself needs a GPU."),
    Claim(
        "workflow", "§4.3",
        "存储：4-bit NF4冻结基座；计算：反量化至BF16，计算后释放；更新：梯度仅到LoRA适配器",
        "Store the frozen base in NF4; dequantize to BF16 for each forward and release it; "
        "gradients reach only the LoRA adapters.",
        f"{_QLORA}, §3 (QLoRA)",
        ("book/06_qlora",),
        ("tests/test_qlora.py::test_no_dequantized_copy_is_kept",
         "tests/test_qlora.py::test_only_adapters_are_parameters_and_only_they_change"),
        "base stored as buffers, unchanged after training; no dequantized copy kept; only A, B "
        "in the optimizer", "exact"),
    Claim(
        "table-memory", "总结",
        "显存/参数效率：Adapter较高，LoRA高，AdaLoRA更高，QLoRA极高",
        "Memory/parameter efficiency: Adapter high, LoRA higher, AdaLoRA higher still, QLoRA "
        "highest.",
        "the note's closing table",
        ("book/08_comparison",),
        ("tests/test_memory.py::test_measure_state_bytes_full_vs_lora",
         "tests/test_qlora.py::test_prepare_qlora_report_and_freezing"),
        "training state (model + gradients + AdamW), bytes: full 1,159,384; Adapter 346,632; "
        "LoRA 342,124; AdaLoRA 553,144; QLoRA 113,864",
        "partly holds",
        "QLoRA's 极高 holds (9.8 % of full fine-tuning's state); Adapter and LoRA are level at "
        "the same budget; AdaLoRA holds more than LoRA while it trains."),
    Claim(
        "table-latency", "总结",
        "推理延迟：Adapter增加，LoRA/AdaLoRA/QLoRA无",
        "Inference latency: Adapter adds some; LoRA, AdaLoRA and QLoRA add none.",
        "the note's closing table",
        ("book/08_comparison",),
        ("tests/test_lora.py::test_merge_lora_gives_plain_linears_and_same_output",
         "tests/test_qlora.py::test_merge_both_ways"),
        "merged LoRA, AdaLoRA and QLoRA (to 16 bit) have the base's modules and shapes, outputs "
        "within 1e-5; unmerged at batch 1: LoRA about 1.2×, AdaLoRA 1.6×, QLoRA on its 4-bit "
        "base 5×",
        "partly holds",
        "无 (none) only after merging, and for QLoRA only after merging into 16 bit: a 4-bit base "
        "is dequantized in every forward pass."),
)


def verdict_counts(claims: tuple[Claim, ...] = CLAIMS) -> dict[str, int]:
    """How many claims have each verdict, in the order of :data:`VERDICTS`."""
    check_instance("claims", claims, tuple)
    for i, c in enumerate(claims):
        check_instance(f"claims[{i}]", c, Claim)
    counts = Counter(c.verdict for c in claims)
    return {v: counts.get(v, 0) for v in VERDICTS}

"""Every requested target must select a layer: a typo is an error that names it, and adapting a
layer twice says so (found by running the library as coursework would)."""

from __future__ import annotations

import pytest
from torch import nn

from lora_edu.adalora import apply_adalora
from lora_edu.adapter import apply_adapters
from lora_edu.lora import apply_lora
from lora_edu.toy import TinyTransformer


def test_a_target_that_matches_nothing_is_named_and_the_model_is_unchanged():
    model = TinyTransformer()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=r"^target_modules=.*\['vproj'\] matched nothing"):
        apply_lora(model, ["q_proj", "vproj"], r=2, alpha=4)
    assert [type(m) for m in model.modules()] == before          # nothing was adapted


@pytest.mark.parametrize("apply", [
    lambda m, t: apply_lora(m, t, r=2, alpha=4),
    lambda m, t: apply_adalora(m, t, r=2, alpha=4),
    lambda m, t: apply_adapters(m, t),
])
def test_every_injector_refuses_a_typo(apply):
    with pytest.raises(ValueError, match="'fc_2'"):
        apply(TinyTransformer(), ["fc1", "fc_2"])


def test_applying_lora_twice_names_the_cause():
    model = apply_lora(TinyTransformer(), ["q_proj", "v_proj"], r=2, alpha=4)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model, ["q_proj"], r=2, alpha=4)


def test_all_targets_matching_still_works():
    model = apply_lora(TinyTransformer(), ["q_proj", "v_proj"], r=2, alpha=4)
    n_adapted = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    n_linear_qv = sum(1 for name, m in TinyTransformer().named_modules()
                      if isinstance(m, nn.Linear) and name.endswith(("q_proj", "v_proj")))
    assert n_adapted == n_linear_qv > 0

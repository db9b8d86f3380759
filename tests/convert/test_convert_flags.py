"""`acdc convert`'s flags for what a conversion may do: each refusal is one paragraph and
exit 2, and the flag that allows it is named."""

from __future__ import annotations

import pytest

from acdc_recipe.cli.main import main

ACDC = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 20}
  - !ACDCPruningModifier {compression_sparsity: 0.9, start_epoch: 0, end_epoch: 16,
                          update_frequency: 2, params: __ALL_PRUNABLE__}
"""
GMP_HALF_EPOCHS = """\
modifiers:
  - !GMPruningModifier {init_sparsity: 0.1, final_sparsity: 0.8, start_epoch: 1,
                        end_epoch: 5, update_frequency: 0.5, params: __ALL_PRUNABLE__}
"""
CONSTANT_ONLY = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 10}
  - !ConstantPruningModifier {start_epoch: 0, params: __ALL_PRUNABLE__}
"""
LINEAR_DECAY = (
    ACDC
    + """\
  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 20, lr_func: linear,
                                   init_lr: 0.1, final_lr: 0.0}
"""
)


@pytest.mark.parametrize(
    "content, args, message, allowed",
    [
        (ACDC, ["--sparseml-version", "0.9"], "0.11.x and of 0.12 onwards", None),
        (ACDC, ["--steps-per-epoch", "0"], "--steps-per-epoch must be at least 1", None),
        (GMP_HALF_EPOCHS, [], "give --steps-per-epoch N", ["--steps-per-epoch", "4"]),
        (CONSTANT_ONLY, [], "give --allow-dense", ["--allow-dense"]),
        (LINEAR_DECAY, ["--model", "mlp"], "give --allow-approximate-lr",
         ["--allow-approximate-lr"]),
    ],
)  # fmt: skip
def test_a_refused_conversion_is_one_paragraph_and_its_flag_allows_it(
    tmp_path, capsys, content, args, message, allowed
):
    source = tmp_path / "recipe.yaml"
    source.write_text(content)
    assert main(["convert", str(source), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in " ".join(err.split())
    assert "Traceback" not in err and err.count("\n") == 1
    if allowed is not None:
        assert main(["convert", str(source), *args, *allowed, "-o", str(tmp_path / "o.yaml")]) == 0

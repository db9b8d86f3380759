"""SparseML recipes key by key: safe tags, variables as jinja2, params as rules, LR modifiers,
and a clear error for what cannot convert."""

from __future__ import annotations

import pytest

from acdc_recipe.convert import ConversionError, convert_text
from acdc_recipe.language.loading import load_recipe_text
from acdc_recipe.language.timeline import lower

ACDC = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 20}
  - !ACDCPruningModifier
    compression_sparsity: 0.9
    start_epoch: 0
    end_epoch: 16
    update_frequency: 2
    params: __ALL_PRUNABLE__
"""


def convert(text, source="recipe.yaml", **options):
    return convert_text(text, source, **options)


def texts(items):
    return " ".join(item.render() for item in items)


def test_tags_are_read_safely_and_python_tags_are_refused(tmp_path):
    marker = tmp_path / "ran"
    hostile = ACDC + (f"  - !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConversionError, match="invalid YAML"):
        convert(hostile)
    assert not marker.exists()


def test_keys_of_the_converted_recipe():
    recipe = convert(ACDC).recipe
    assert recipe.sparsity.target == 0.9 and recipe.sparsity.scope == "global"
    assert recipe.sparsity.rules == ()
    assert recipe.optimizer_state.on_decompress == "reset"
    # From 16 - 2 = 14 every update is compressed; the mask chosen at 16 is held to the end.
    assert recipe.schedule.transitions.sparse_at == (2, 6, 10, 14, 16)
    assert recipe.schedule.transitions.dense_at == (4, 8, 12)
    assert recipe.schedule.transitions.epochs == 20
    assert recipe.train is None


def test_momentum_buffer_reset_false_keeps_optimizer_state():
    recipe = convert(ACDC + "    momentum_buffer_reset: false\n").recipe
    assert recipe.optimizer_state.on_decompress == "keep"


def test_the_converted_text_loads_to_the_same_recipe():
    conversion = convert(ACDC)
    assert load_recipe_text(conversion.text) == conversion.recipe
    assert conversion.text.startswith("# Converted from recipe.yaml (SparseML recipe).")


def test_arithmetic_variables_become_jinja2_variables_others_are_evaluated():
    text = """\
sparsity: 0.8
num_epochs: 20
lr: 0.05
final_lr: eval(lr * 0.1)
end: eval(num_epochs - 4)
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier
    {start_epoch: 0, end_epoch: eval(num_epochs), lr_func: cosine, init_lr: eval(lr),
     final_lr: eval(final_lr)}
  - !ACDCPruningModifier
    {compression_sparsity: eval(sparsity), start_epoch: 0, end_epoch: eval(end),
     update_frequency: 2, params: __ALL_PRUNABLE__}
"""
    conversion = convert(text, model="mlp")
    assert "target: '{{ sparsity }}'" in conversion.text
    assert "final_lr: '{{ lr * 0.1 }}'" in conversion.text
    assert conversion.recipe.variables == pytest.approx(
        {"sparsity": 0.8, "lr": 0.05, "final_lr": 0.005}
    )
    assert conversion.recipe.train.lr_schedule.final_lr == pytest.approx(0.005)
    # The schedule's variables are evaluated into it, so they are not recipe variables.
    assert "num_epochs" not in conversion.recipe.variables
    assert "evaluated into the recipe" in texts(conversion.report.mapped)
    changed = load_recipe_text(conversion.text, overrides={"lr": 0.2})
    assert changed.train.optimizer.lr == 0.2
    assert changed.train.lr_schedule.final_lr == pytest.approx(0.02)


def test_a_variable_the_schedule_uses_is_not_left_as_a_template():
    text = ACDC.replace("update_frequency: 2", "update_frequency: eval(sparsity * 0 + 2)")
    text = "sparsity: 0.9\n" + text.replace("compression_sparsity: 0.9",
                                            "compression_sparsity: eval(sparsity)")  # fmt: skip
    conversion = convert(text)
    assert conversion.recipe.variables == {}
    assert conversion.recipe.sparsity.target == 0.9


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os').getcwd()", "variable `bad`: .* outside SparseML's eval .a call of"),
        ("open('x')", "outside SparseML's eval .a call of open found"),
        ("[1, 2][0]", "outside SparseML's eval .Subscript found"),
        ("max(*[1, 2])", "outside SparseML's eval .Starred found"),
        ("max(1, **a)", r"outside SparseML's eval .\*\* found"),
        ("x.real", "outside SparseML's eval .Attribute found"),
        ("2.0 ** 2000", "cannot evaluate: the value is too large"),
        ("int(1e300) * int(1e300) ** 2", "cannot evaluate: the value is too large"),
        ("round(1, 2, 3)", "cannot evaluate: round"),
        ("missing + 1", "uses missing, which the recipe does not define"),
        ("10 ** 10 ** 10", "cannot evaluate"),
        ("1 / 0", "cannot evaluate"),
    ],
)
def test_non_arithmetic_expressions_are_errors_naming_the_variable(expression, message):
    with pytest.raises(ConversionError, match=message):
        convert(f'bad: "eval({expression})"\n' + ACDC)


def test_variables_in_a_cycle_are_an_error_naming_them():
    with pytest.raises(ConversionError, match="a, b use each other in a cycle"):
        convert("a: eval(b + 1)\nb: eval(a + 1)\n" + ACDC)


def test_variables_may_be_declared_in_any_order():
    text = "b: eval(a * 2)\na: 3\n" + ACDC.replace(
        "update_frequency: 2", "update_frequency: eval(b)"
    )
    recipe = convert(text).recipe
    assert recipe.schedule.transitions.sparse_at[0] == 6


def test_params_with_a_pattern_become_one_rule_for_their_union():
    text = ACDC.replace("params: __ALL_PRUNABLE__", "params: ['re:.*conv*', 'fc.weight']")
    recipe = convert(text).recipe
    assert [r.model_dump(exclude_defaults=True) for r in recipe.sparsity.rules] == [
        {"match": r"re:(?:.*conv*).*|fc\.weight", "include": True},
        {"match": "re:.*", "dense": True, "include": True},
    ]


def test_params_names_only_become_one_rule_each_repeats_dropped():
    names = ["layer1.0.conv1.weight", "fc.weight", "layer1.0.conv1.weight", "fc.weight"]
    recipe = convert(ACDC.replace("params: __ALL_PRUNABLE__", f"params: {names}")).recipe
    assert [r.match for r in recipe.sparsity.rules] == ["layer1.0.conv1.weight", "fc.weight",
                                                        "re:.*"]  # fmt: skip


def test_modifiers_with_the_same_params_set_in_another_order_share_one_schedule():
    first = "['re:features.*.conv.*.weight', 're:features.*.conv.*.*.weight']"
    second = "['re:features.*.conv.*.*.weight', 're:features.*.conv.*.weight', " \
             "'re:features.*.conv.*.weight']"  # fmt: skip
    text = ACDC.replace("params: __ALL_PRUNABLE__", f"params: {first}") + (
        "  - !GMPruningModifier {init_sparsity: 0.9, final_sparsity: 0.9, start_epoch: 17,\n"
        f"     end_epoch: 20, update_frequency: 1, global_sparsity: true, params: {second}}}\n"
    )
    recipe = convert(text).recipe
    assert len(recipe.sparsity.rules) == 2


def test_an_invalid_params_regex_is_an_error():
    with pytest.raises(ConversionError, match="invalid regex"):
        convert(ACDC.replace("params: __ALL_PRUNABLE__", "params: ['re:(']"))


def test_unknown_modifiers_and_keys_are_reported_not_dropped():
    text = ACDC + "    frobnicate: 3\n  - !QuantizationModifier {start_epoch: 5}\n"
    report = convert(text).report
    missing = texts(report.no_equivalent)
    assert "QuantizationModifier (line 10): QuantizationModifier has no acdc equivalent" in missing
    assert "key `frobnicate` has no equivalent" in missing


def test_modifiers_pruning_different_params_are_an_error():
    text = ACDC + (
        "  - !GMPruningModifier {init_sparsity: 0.9, final_sparsity: 0.9, start_epoch: 16,\n"
        "     end_epoch: 20, update_frequency: 1, params: ['fc.weight']}\n"
    )
    with pytest.raises(ConversionError, match="differ in `params`"):
        convert(text)


def test_learning_rate_steps_by_one_factor_become_multistep():
    text = ACDC + (
        "  - !SetLearningRateModifier {start_epoch: 0, learning_rate: 0.1}\n"
        "  - !SetLearningRateModifier {start_epoch: 8, learning_rate: 0.01}\n"
        "  - !SetLearningRateModifier {start_epoch: 14, learning_rate: 0.001}\n"
    )
    train = convert(text, model="mlp").recipe.train
    assert train.optimizer.lr == 0.1
    assert train.lr_schedule.name == "multistep" and train.lr_schedule.milestones == (8, 14)
    assert train.lr_schedule.gamma == pytest.approx(0.1)


def test_multistep_lr_modifier_maps_to_multistep():
    text = ACDC + (
        "  - !LearningRateModifier {start_epoch: 0, lr_class: MultiStepLR, init_lr: 0.1,\n"
        "     lr_kwargs: {milestones: [10, 15], gamma: 0.2}}\n"
    )
    schedule = convert(text, model="mlp").recipe.train.lr_schedule
    assert (schedule.name, schedule.milestones, schedule.gamma) == ("multistep", (10, 15), 0.2)


LINEAR_DECAY = ACDC + (
    "  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 20, lr_func: linear,\n"
    "     init_lr: 0.01, final_lr: 0.1}\n"
    "  - !SetLearningRateModifier {start_epoch: 3, learning_rate: 0.05}\n"
)


def test_an_lr_schedule_without_equivalent_is_refused_unless_approximation_is_allowed():
    with pytest.raises(ConversionError, match="--allow-approximate-lr .* constant 0.1, its peak"):
        convert(LINEAR_DECAY, model="mlp")
    conversion = convert(LINEAR_DECAY, model="mlp", allow_approximate_lr=True)
    assert conversion.recipe.train.optimizer.lr == 0.1  # the peak, not the first value
    assert conversion.recipe.train.lr_schedule.name == "constant"
    assert "no acdc equivalent" in texts(conversion.report.no_equivalent)
    assert "constant 0.1 (the source's peak)" in texts(conversion.report.approximated)
    # Without --model no train section is written, so nothing is refused.
    assert convert(LINEAR_DECAY).recipe.train is None


def test_each_learning_rate_modifier_is_reported_once():
    text = ACDC + (
        "  - !SetLearningRateModifier {start_epoch: 0, learning_rate: 0.1}\n"
        "  - !SetLearningRateModifier {start_epoch: 8, learning_rate: 0.03}\n"
        "  - !SetLearningRateModifier {start_epoch: 14, learning_rate: 0.001}\n"
    )
    report = convert(text, model="mlp", allow_approximate_lr=True).report
    for line in (9, 10, 11):
        where = f"!SetLearningRateModifier (line {line})"
        items = [i for i in report.mapped + report.no_equivalent if i.where == where]
        assert len(items) == 1, items


def test_a_staged_recipe_is_an_error():
    staged = "stage_0:\n  " + ACDC.replace("\n", "\n  ")
    with pytest.raises(ConversionError, match="staged recipe"):
        convert(staged)


def test_a_recipe_without_an_end_needs_epochs():
    text = "modifiers:\n  - !SetLearningRateModifier {learning_rate: 0.1}\n"
    with pytest.raises(ConversionError, match="give the run's length with --epochs"):
        convert(text)
    recipe = convert(text, epochs=5).recipe
    assert lower(recipe.schedule).compact() == "D0-4" and recipe.sparsity is None


def test_a_markdown_card_without_front_matter_is_an_error():
    with pytest.raises(ConversionError, match="without YAML front matter"):
        convert("# just a title\n", "card.md")


def test_sparsemls_eval_functions_are_evaluated_and_what_they_read_is_not_a_template():
    """restricted_eval (sparseml/utils/restricted_eval.py) also calls abs, float, int, min,
    max and round, as SparseZoo's AC/DC ResNet-50 recipe does (`eval(int(...))`)."""
    text = """\
num_epochs: 10
ratio: 0.85
lr: 0.05
acdc_end: eval(int(num_epochs * ratio))
final_lr: eval(max(lr / 100, round(abs(-0.00123), 4)))
sparsity: eval(min(float(0.9), 0.95))
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
  - !LearningRateFunctionModifier
    {start_epoch: 0, end_epoch: eval(num_epochs), lr_func: cosine, init_lr: eval(lr),
     final_lr: eval(final_lr)}
  - !ACDCPruningModifier
    {compression_sparsity: eval(sparsity), start_epoch: 0, end_epoch: eval(acdc_end),
     update_frequency: 2, params: __ALL_PRUNABLE__}
"""
    conversion = convert(text, model="mlp")
    recipe = conversion.recipe
    assert recipe.sparsity.target == 0.9
    assert recipe.schedule.transitions.sparse_at == (2, 6, 8)  # end_epoch int(8.5) = 8
    assert recipe.train.lr_schedule.final_lr == pytest.approx(0.0012)
    # final_lr calls functions, so it and the lr it reads are evaluated into the recipe:
    # `--set lr=...` cannot leave final_lr behind.
    assert recipe.variables == {"sparsity": 0.9} and recipe.train.optimizer.lr == 0.05
    assert "lr" in texts(conversion.report.mapped)


def test_a_markdown_card_with_toml_style_fences_is_read_as_sparseml_reads_it():
    card = convert("# AC/DC\n+++\n" + ACDC + "+++\nTrain it with ...\n", "card.md").recipe
    plain = convert(ACDC).recipe
    assert (card.schedule, card.sparsity) == (plain.schedule, plain.sparsity)


@pytest.mark.parametrize(
    "mask, pattern",
    [
        ("block4", "block:1x4"),
        ("[1, 4]", "block:1x4"),
        ("[2, 2]", "block:2x2"),
        ("[4, 1]", "block:4x1"),
    ],
)
def test_mask_type_blocks_become_block_patterns(mask, pattern):
    recipe = convert(ACDC + f"    mask_type: {mask}\n").recipe
    assert recipe.sparsity.pattern == pattern


@pytest.mark.parametrize("mask", ["[1, 1]", "[0, 4]", "[1, 2, 3]", "[1.5, 4]", "'2:4'", "blocks"])
def test_a_mask_type_without_equivalent_is_named_as_written(mask):
    with pytest.raises(ConversionError, match="mask_type .* has no equivalent") as error:
        convert(ACDC + f"    mask_type: {mask}\n")
    assert "Number(" not in str(error.value)


CONSTANT_ONLY = """\
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 10}
  - !ConstantPruningModifier {start_epoch: 0, params: __ALL_PRUNABLE__}
  - !MFACPruningModifier {start_epoch: 0, end_epoch: 5, init_sparsity: 0.1,
                          final_sparsity: 0.8, params: __ALL_PRUNABLE__}
"""


def test_a_recipe_whose_pruning_is_all_left_out_is_refused_unless_dense_is_allowed():
    with pytest.raises(ConversionError, match="--allow-dense") as error:
        convert(CONSTANT_ONLY)
    assert "ConstantPruningModifier (line 3)" in str(error.value)
    assert "MFACPruningModifier (line 4)" in str(error.value)
    conversion = convert(CONSTANT_ONLY, allow_dense=True)
    assert conversion.recipe.sparsity is None
    assert "the recipe trains dense" in texts(conversion.report.no_equivalent)


@pytest.mark.parametrize(
    "version, message", [("0.10", "0.11.x and of 0.12 onwards"), ("eleven", "not a release number")]
)
def test_an_unknown_sparseml_version_is_an_error(version, message):
    with pytest.raises(ConversionError, match=message):
        convert(ACDC, sparseml_version=version)


def test_release_numbers_pick_the_rule_of_their_release():
    legacy = convert(ACDC, sparseml_version="0.11.1").recipe.schedule.transitions.sparse_at
    assert legacy == convert(ACDC, sparseml_version="0.11").recipe.schedule.transitions.sparse_at
    assert convert(ACDC, sparseml_version="1.7.0").recipe == convert(ACDC).recipe
    assert legacy != convert(ACDC).recipe.schedule.transitions.sparse_at

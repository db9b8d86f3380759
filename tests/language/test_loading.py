"""Loading: YAML positions, variables, --set, the resolved dump and its round trip."""

import textwrap

import pytest

from acdc_recipe.errors import RecipeError
from acdc_recipe.language.loading import dump_recipe, load_recipe, load_recipe_text, parse_set_args

BASE = textwrap.dedent(
    """\
    version: 1
    name: test-{{ (sparsity * 100) | round | int }}
    variables:
      sparsity: 0.9
      epochs: 20
      blocks: "{{ epochs // 10 }}"
    sparsity:
      target: "{{ sparsity }}"
    schedule:
      acdc: {epochs: "{{ epochs }}", warmup: 4, sparse: 2, dense: 2, last_dense: 2, final_sparse: 4}
    """
)


def problems(text, **kwargs):
    with pytest.raises(RecipeError) as caught:
        load_recipe_text(text, "r.yaml", **kwargs)
    return caught.value.problems


def test_variables_keep_their_types_and_names_render():
    recipe = load_recipe_text(BASE)
    assert recipe.sparsity.target == 0.9 and isinstance(recipe.schedule.acdc.epochs, int)
    assert recipe.name == "test-90"
    assert recipe.variables == {"sparsity": 0.9, "epochs": 20, "blocks": 2}


def test_overrides_set_variables_and_dotted_keys_and_are_written_back():
    recipe = load_recipe_text(BASE, overrides={"sparsity": 0.95, "schedule.unit": "step"})
    assert recipe.sparsity.target == 0.95 and recipe.name == "test-95"
    assert recipe.schedule.unit == "step"
    assert recipe.variables["sparsity"] == 0.95
    assert load_recipe_text(BASE, epochs=32).schedule.acdc.epochs == 32


def test_resolved_dump_reloads_to_an_equal_recipe():
    recipe = load_recipe_text(BASE, overrides={"sparsity": 0.8})
    text = dump_recipe(recipe)
    assert "{{" not in text.split("variables")[0]
    assert load_recipe_text(text) == recipe


def test_unknown_variable_override_suggests_the_declared_one():
    (problem,) = problems(BASE, overrides={"sparsty": 0.5})
    assert "no such variable" in problem.message and problem.suggestion == "'sparsity'"


def test_a_key_set_by_an_override_is_located_at_the_override_not_the_file():
    found = problems(BASE, overrides={"schedule.acdc.epocs": 30, "schedule.acdc.warmup": "four"})
    by_origin = {problem.origin: problem for problem in found}
    typo, wrong = by_origin["--set schedule.acdc.epocs"], by_origin["--set schedule.acdc.warmup"]
    assert typo.render("r.yaml") == (
        "--set schedule.acdc.epocs at `schedule.acdc.epocs`: unknown key 'epocs' "
        "(did you mean 'epochs'?)"
    )
    assert wrong.line is None and "valid integer" in wrong.message
    (in_file,) = problems(BASE.replace("warmup: 4", "warmup: four"))
    assert in_file.render("r.yaml").startswith("r.yaml:10:")


def test_undefined_template_variable_is_located():
    (problem,) = problems(BASE.replace('"{{ sparsity }}"', '"{{ sparsness }}"'))
    assert problem.path == ("sparsity", "target") and problem.line == 8
    assert "sparsness" in problem.message and "undefined" in problem.message


def test_every_problem_is_reported_with_line_and_suggestion():
    text = BASE.replace("target:", "tagret:").replace("warmup: 4", "warmup: -1")
    found = {p.path: p for p in problems(text)}
    assert found[("sparsity", "tagret")].line == 8
    assert found[("sparsity", "tagret")].suggestion == "'target'"
    assert found[("sparsity", "target")].message.startswith("required key")
    assert ("schedule", "acdc", "warmup") in found


def test_yaml_syntax_and_duplicate_keys_and_non_mappings():
    (problem,) = problems("name: x\nschedule: [unclosed\n")
    assert problem.message.startswith("invalid YAML") and problem.line is not None
    (problem,) = problems("name: a\nname: b\nschedule: {phases: [{dense: 1}]}\n")
    assert "duplicate key 'name'" in problem.message and problem.line == 2
    assert "found a list" in problems("- 1\n- 2\n")[0].message
    assert "empty file" in problems("")[0].message
    (problem,) = problems("name: x\n\x1f\n")  # YAML refuses control characters
    assert (
        "the character #x001f is not allowed in a recipe" in problem.message
        and "\n" not in problem.message
    )


def test_schedule_errors_point_at_the_schedule():
    (problem,) = problems(BASE.replace("epochs: 20", "epochs: 21"))
    assert problem.path == ("schedule", "acdc", "epochs") and problem.line == 10
    assert "epochs that fit" in problem.message


def test_sparse_schedule_without_sparsity_is_an_error():
    text = "name: x\nschedule: {phases: [{dense: 1}, {sparse: 1}]}\n"
    assert "sparsity" in problems(text)[0].message
    assert load_recipe_text("name: x\nschedule: {phases: [{dense: 3}]}\n").sparsity is None


def test_templates_cannot_escape_the_sandbox():
    text = BASE.replace("name: test", "name: \"{{ ''.__class__.__mro__ }}\"\nx: test")
    assert any("not allowed" in p.message or "unsafe" in p.message for p in problems(text))


def test_parse_set_args_types_values_and_rejects_garbage():
    assert parse_set_args(["a=0.5", "b=true", "c=[1, 2]", "d=text", "e.f=3"]) == {
        "a": 0.5, "b": True, "c": [1, 2], "d": "text", "e.f": 3,
    }  # fmt: skip
    with pytest.raises(RecipeError, match="key=value"):
        parse_set_args(["novalue"])


def test_files_and_shipped_names(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    assert load_recipe(path).name == "test-90"
    assert load_recipe("quickstart").name == "quickstart"
    with pytest.raises(RecipeError) as caught:
        load_recipe("quickstrat")
    assert caught.value.problems[0].suggestion == "'quickstart'"
    assert "quickstrat" in str(caught.value)


def test_a_variable_used_only_by_another_set_value_may_be_set():
    overrides = {"sparsity.target": "{{ blocks / 4 }}", "blocks": 3}
    assert load_recipe_text(BASE, overrides=overrides).sparsity.target == 0.75
    (problem,) = problems(BASE, overrides={"blocks": 3})
    assert "no template uses" in problem.message


@pytest.mark.parametrize("written, mode", [("off", "off"), ("on", "on"), ("auto", "auto")])
def test_sparse_kernels_read_bare_yaml_on_and_off_as_modes(written, mode):
    text = BASE + f"train: {{model: {{name: mlp}}, sparse_kernels: {written}}}\n"
    recipe = load_recipe_text(text)
    assert recipe.train.sparse_kernels == mode
    assert load_recipe_text(dump_recipe(recipe)).train.sparse_kernels == mode
    assert problems(BASE + "train: {model: {name: mlp}, sparse_kernels: fast}\n")


def test_sparse_kernels_are_a_key_a_resume_may_change():
    from acdc_recipe.language.schema import recipe_hash
    from acdc_recipe.language.train_config import is_resumable

    on = load_recipe_text(BASE + "train: {model: {name: mlp}, sparse_kernels: on}\n")
    off = load_recipe_text(BASE + "train: {model: {name: mlp}}\n")
    assert is_resumable("train.sparse_kernels") and recipe_hash(on) == recipe_hash(off)


def test_sparse_kernels_with_sharded_training_is_refused_at_validation():
    text = BASE + "train: {model: {name: mlp}, distributed: fsdp, sparse_kernels: auto}\n"
    (problem,) = problems(text)
    assert "whole weights" in problem.message and "distributed: ddp" in problem.message
    assert load_recipe_text(text.replace("auto", "off")).train.distributed == "fsdp"


@pytest.mark.parametrize(
    ("sparsity", "said"),
    [
        ("{target: 0.9, scope: uniform, min_density: 0.01}", "scope global or lamp"),
        ("{target: 0.9, min_density: 0.2}", "keeps more of every layer than the target"),
        ("{target: 0.9, rules: [{match: fc, dense: true, min_density: 0.1}]}", "by itself"),
        ("{target: 0.9, rules: [{match: fc, target: 0.5, min_density: 0.1}]}", "by itself"),
        ("{target: 0.9, scope: erk, rules: [{match: fc, min_density: 0.1}]}", "scope global"),
        ("{target: 0.9, min_density: 0}", "greater than 0"),
        ("{target: 0.9, scope: uniform, min_per_channel: 1}", "scope global or lamp"),
        ("{target: 0.9, rules: [{match: fc, pattern: '2:4', min_per_channel: 1}]}", "by itself"),
        ("{target: 0.9, min_per_channel: -1}", "greater than or equal to 0"),
        ("{target: 0.9, min_per_channel: 0.5}", "integer"),
    ],
)
def test_min_density_that_cannot_apply_is_refused_at_its_line(sparsity, said):
    text = BASE.replace('sparsity:\n  target: "{{ sparsity }}"\n', f"sparsity: {sparsity}\n")
    (problem,) = problems(text)
    assert said in problem.message and problem.line == 7  # the sparsity line


def test_lamp_and_min_density_load_and_lamp_is_refused_under_fsdp():
    text = BASE.replace('  target: "{{ sparsity }}"\n', "  target: 0.9\n  scope: lamp\n")
    recipe = load_recipe_text(text + "train: {model: {name: mlp}}\n")
    assert recipe.sparsity.scope == "lamp" and recipe.sparsity.min_density is None
    floored = load_recipe_text(text.replace("scope: lamp", "min_density: 0.1"))
    assert floored.sparsity.min_density == 0.1  # 0.1 of every layer, as 1 - 0.9 leaves
    per_channel = load_recipe_text(text.replace("scope: lamp", "scope: lamp\n  min_per_channel: 1"))
    assert per_channel.sparsity.min_per_channel == 1
    (problem,) = problems(text + "train: {model: {name: mlp}, distributed: fsdp}\n")
    assert "scope: lamp" in problem.message and "min_density" in problem.message

"""Sandboxed templating: native types, strict undefined names, typed --set values."""

import pytest

from acdc_recipe.language.templating import TemplateProblem, parse_typed, render_tree, render_value


def test_whole_expressions_keep_their_type():
    assert render_value("{{ s }}", {"s": 0.9}) == 0.9
    assert render_value("{{ range(10, 71, 10) | list + [85] }}", {}) == [
        10,
        20,
        30,
        40,
        50,
        60,
        70,
        85,
    ]
    assert render_value(" {{ n * 2 }} ", {"n": 3}) == 6
    assert render_value("run-{{ n }}", {"n": 3}) == "run-3"
    assert render_value("{{ a }}-{{ b }}", {"a": 1, "b": 2}) == "1-2"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("{{ missing }}", "undefined"),
        ("{{ [1, missing] }}", "undefined"),
        ("x{{ missing }}", "undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% if %}", "syntax"),
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ],
)
def test_failures_are_template_problems(text, fragment):
    with pytest.raises(TemplateProblem, match=fragment):
        render_value(text, {})


def test_render_tree_reports_each_failure_with_its_path():
    failures = []
    tree = {"a": ["{{ x }}", "{{ nope }}"], "b": {"c": "{{ x + 1 }}"}}
    result = render_tree(tree, {"x": 1}, lambda path, message: failures.append(path))
    assert result["a"][0] == 1 and result["b"]["c"] == 2
    assert failures == [("a", 1)]


def test_parse_typed():
    assert parse_typed("0.95") == 0.95
    assert parse_typed("false") is False
    assert parse_typed("[75, 115]") == [75, 115]
    assert parse_typed("resnet50") == "resnet50"
    assert parse_typed("[unclosed") == "[unclosed"
    assert parse_typed("") == ""

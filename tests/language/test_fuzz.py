"""Thousands of mutated recipes: each loads or raises RecipeError with a location, nothing else."""

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acdc_recipe.errors import RecipeError
from acdc_recipe.language.loading import load_recipe_text, shipped_recipes

BASE_TEXT = shipped_recipes()["quickstart"]
BASE = yaml.safe_load(BASE_TEXT)
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["global", "2:4", "block:1x4", "5:4", "{{ sparsity }}", "re:[", "sgd"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
templates = st.sampled_from(
    [
        "{{ undefined_name }}",
        "{{ sparsity / 0 }}",
        "{{ sparsity + 'x' }}",
        "{% for %}",
        "{{ ",
        "{{ ''.__class__ }}",
        "{{ range(10**9) | list }}",
        "{{ epochs * 2 }}",
        "{{ [sparsity, undefined] }}",
        "{{ sparsity }}{{ epochs }}",
    ]
)


def paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from paths(value, (*prefix, index))


ALL_PATHS = [p for p in paths(BASE) if p]


def set_path(tree, path, value):
    tree = copy.deepcopy(tree)
    node = tree
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return tree


def delete_path(tree, path):
    tree = copy.deepcopy(tree)
    node = tree
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return tree


def assert_loads_or_located(text):
    try:
        load_recipe_text(text, "fuzz.yaml")
    except RecipeError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.line is not None and problem.line >= 1, problem
            assert problem.message
            assert str(error).startswith("Recipe fuzz.yaml")


@pytest.mark.slow
@FUZZ
@given(
    st.sampled_from(ALL_PATHS),
    st.one_of(values, templates),
    st.sampled_from(["set", "del", "extra"]),
)
def test_tree_mutations(path, value, action):
    if action == "set":
        tree = set_path(BASE, path, value)
    elif action == "del":
        tree = delete_path(BASE, path)
    else:
        parent = path[:-1]
        node = BASE
        for part in parent:
            node = node[part]
        tree = (
            set_path(BASE, (*parent, "unexpected_key"), value) if isinstance(node, dict) else BASE
        )
    assert_loads_or_located(yaml.safe_dump(tree, allow_unicode=True))


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_text_mutations(data):
    text = BASE_TEXT
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.text(alphabet=" \n\t:-[]{}'\"&*!#%|>,?x0.9", max_size=4))
        text = text[:position] + insert + text[position + cut :]
    assert_loads_or_located(text)


@pytest.mark.slow
@FUZZ
@given(
    st.sampled_from(ALL_PATHS),
    templates,
    st.dictionaries(st.sampled_from(["sparsity", "epochs", "x.y"]), values, max_size=2),
)
def test_template_and_override_mutations(path, template, overrides):
    tree = set_path(BASE, path, template)
    text = yaml.safe_dump(tree)
    try:
        load_recipe_text(text, "fuzz.yaml", overrides=overrides)
    except RecipeError as error:
        assert all(p.message for p in error.problems)
        located = (p.line is not None or p.origin is not None for p in error.problems if p.path)
        assert all(located), error

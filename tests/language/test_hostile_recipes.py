"""Recipe text that once escaped the located-error path or hung: each is now a RecipeError
at file:line:col that says what is wrong (a watchdog fails a case that hangs)."""

from __future__ import annotations

import signal

import pytest

from acdc_recipe.errors import RecipeError
from acdc_recipe.language.loading import decode_recipe, load_recipe, load_recipe_text

TAIL = "schedule: {acdc: {epochs: 100}}\nsparsity: {target: 0.9}\n"


WATCHDOG_SECONDS = 10.0  # a hang, not a slow parse (far above any case on a busy machine)


def _hung(signum: int, frame: object) -> None:
    raise TimeoutError(f"the recipe did not load or fail within {WATCHDOG_SECONDS} s")


def problem_of(text: str | bytes) -> str:
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
    try:
        with pytest.raises(RecipeError) as error:
            data = text if isinstance(text, str) else decode_recipe(text, "r.yaml")
            load_recipe_text(data, "r.yaml")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    (problem,) = error.value.problems
    assert problem.line is not None and problem.column is not None
    return problem.render("r.yaml")


@pytest.mark.parametrize(
    "text, where, words",
    [
        ("name: a\x01b\n" + TAIL, "r.yaml:1:8", "character #x0001 is not allowed"),
        ("name: x\nseed: " + "9" * 5000 + "\n" + TAIL, "r.yaml:2:7", "an integer of 5000 digits"),
        ("name: x\nvariables: {a: " + "[" * 3000 + "]" * 3000 + "}\n" + TAIL, "r.yaml:2:",
         "nested more than 32 levels"),
        ("name: x\nvariables:\n" + "".join("  " * i + "- \n" for i in range(60)) + TAIL,
         "r.yaml:", "nested more than 32 levels"),
        ('name: "a\\ud800b"\n' + TAIL, "r.yaml:1:7 at `name`", "lone surrogate"),
        ('name: "a\\x07b"\n' + TAIL, "r.yaml:1:1 at `name`", "must be printable"),
        ('name: x\n' + TAIL + 'train: {model: {name: mlp}, optimizer: {lr: 1e400}}\n',
         "at `train.optimizer.lr`", "finite number"),
        ('name: x\n' + TAIL + 'train: {model: {name: mlp}, optimizer: {weight_decay: .inf}}\n',
         "at `train.optimizer.weight_decay`", "finite number"),
        ('name: x\n' + TAIL + 'train: {model: {name: mlp}, seed: 100000000000000000000000}\n',
         "at `train.seed`", "less than 9223372036854775808"),
        ("name: x\nschedule: {acdc: {epochs: 100}}\nsparsity: {target: 0.9, rules: "
         "[{match: 're:(('}]}\n", "at `sparsity.rules[0].match`", "invalid regular expression"),
    ],
)  # fmt: skip
def test_bad_text_is_located(text, where, words):
    rendered = problem_of(text)
    assert where in rendered and words in rendered, rendered


LAUGHS = "".join(
    f"  {name}: &{name} [{', '.join([f'*{before}'] * 10)}]\n"
    for before, name in zip("abcde", "bcdef", strict=True)
)


@pytest.mark.parametrize(
    "text, where, words",
    [
        ("name: x\nvariables:\n  s: &a " + "x" * 1_000_000 + "\n  l: [" + ", ".join(["*a"] * 300)
         + "]\n" + TAIL, "r.yaml:3:9", "more than 100,000 characters of text"),
        ("name: x\nvariables:\n  s: &a " + "x" * 50_000 + "\n  l: [" + ", ".join(["*a"] * 300)
         + "]\n" + TAIL, "r.yaml:4:6 at `variables.l`", "expands to 15,000,000 characters"),
        ("name: x\nvariables:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + LAUGHS + TAIL,
         "r.yaml:7:6 at `variables.e`", "expands to 111,111 values"),
        ("name: x\nvariables:\n  l: [" + ", ".join(["0"] * 200_000) + "]\n" + TAIL, "r.yaml:3:",
         "more than 20,000 values"),
        ("name: x\nvariables:\n  l:\n" + "  - 0\n" * 200_000 + TAIL, "r.yaml:19998:5",
         "more than 20,000 values"),
    ],
)  # fmt: skip
def test_huge_and_alias_expanded_recipes_stop_at_a_located_bound(text, where, words):
    """Bounded before anything is built: aliases are measured, never expanded."""
    rendered = problem_of(text)
    assert where in rendered and words in rendered, rendered


def test_a_file_that_is_not_utf8_is_located_at_the_byte(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: x\nversion: 1\ndescription: caf\xe9\n" + TAIL.encode())
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    assert f"{path}:3:17: the file is not UTF-8 text: byte 0xe9" in str(error.value)


@pytest.mark.parametrize(
    "template, bound",
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
         "more than 100,000 loop iterations"),
        ("{{ 'a' * 10**9 }}", "a repetition would be 1,000,000,000"),
        ("{{ [0] * 10**9 }}", "a repetition would be"),
        ("{{ 2 ** 100000 }}", "integers are bounded to 256 bits"),
        ("{{ '%999999999d' % 1 }}", "a format width or precision 999,999,999"),
        ("{{ '%.*f' % (999999999, 1) }}", "a format width 999,999,999"),
        ("{{ '{:>999999999}'.format(1) }}", "is above the bound"),
        ("{{ 'x'.center(10**9) }}", "the width of str.center"),
        ("{{ 'x' | center(10**9) }}", "the width of center"),
        ("{{ ('x' * 99999).replace('x', 'yy' * 999) }}", "a replace would be"),
        ("{{ range(10**9) | list }}", "more than 100,000 loop iterations"),
        ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
         "{% endfor %}{{ ns.s }}", "a ~ concatenation would be"),
        ("{% for i in range(20000) %}{{ 'x' * 99999 }}{% endfor %}", "units of work"),
    ],
)  # fmt: skip
def test_expensive_templates_stop_at_a_named_bound(template, bound):
    quoted = template.replace('"', '\\"')
    rendered = problem_of(f'name: x\nvariables: {{a: "{quoted}"}}\n' + TAIL)
    assert "at `variables.a`: template stopped at a bound" in rendered and bound in rendered


def test_templates_that_recipes_use_still_work():
    recipe = load_recipe_text(
        'name: "r{{ (s * 100) | round | int }}"\nvariables: {s: 0.9, e: 100}\n'
        "sparsity: {target: '{{ s }}'}\nschedule:\n  transitions:\n    epochs: '{{ e }}'\n"
        "    sparse_at: '{{ range(10, 71, 10) | list + [85] }}'\n"
        "    dense_at: '{{ range(15, 66, 10) | list + [75] }}'\n"
    )
    assert recipe.name == "r90" and recipe.schedule.transitions.sparse_at[-1] == 85


def test_the_random_filter_is_gone():
    assert "No filter named 'random'" in problem_of(
        "name: x\nvariables: {a: '{{ [1, 2] | random }}'}\n" + TAIL
    )

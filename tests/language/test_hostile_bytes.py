"""Any byte string given as a recipe loads, or ends in a RecipeError located at file:line:col,
quickly and in bounded memory: 12,000 generated inputs (3,000 of each kind), each under a time
limit.

The inputs are byte-level mutations of every shipped recipe, hostile snippets spliced in
(control characters, invalid UTF-8, deep nesting, huge integers, lone surrogates, template
bombs, aliases, unsafe tags), structured replacements of values in the parsed recipe, and
random bytes.
"""

from __future__ import annotations

import random
import re
import resource
import signal

import pytest
import yaml

from acdc_recipe.errors import RecipeError
from acdc_recipe.language.loading import decode_recipe, load_recipe_text, shipped_recipes

SOURCE = "fuzz.yaml"
LOCATED = re.compile(rf"^  - {re.escape(SOURCE)}:\d+:\d+", re.MULTILINE)
WATCHDOG_SECONDS = 10.0  # a hang, not a slow case (far above any case on a busy machine)
HOSTILE = [
    "\x00", "\x01", "\x1b[31m", "\x7f", "\ufeff", "\u2028", "\t\t",
    "[" * 200, "{a: " * 80, "- " * 60, "9" * 5000, "-" + "7" * 60, "1e400", ".inf", ".nan",
    '"\\ud800"', "'\\ud800'", '"\\x01"', "name: \"a\\u0007b\"",
    "{{ 'a' * 10**9 }}", "{{ [0] * 10**9 }}", "{{ 10 ** 10 ** 10 }}", "{{ 2 ** 100000 }}",
    "{{ '%999999999d' % 1 }}", "{{ '%.*f' % (999999999, 1) }}", "{{ '{:>999999999}'.format(1) }}",
    "{{ 'x'.center(10**9) }}", "{{ 'x' | center(10**9) }}", "{{ ('x' * 99999).replace('x', 'yy' * 999) }}",
    "{{ range(10**9) | list }}", "{{ range(99999) | join('x' * 9999) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "{{ ''.__class__.__mro__ }}",
    "{% include 'x' %}", "{{ 1 | random }}",
    "&a [1, 2]", "*a", "&a [*a, *a, *a]", "!!python/object/apply:os.system ['true']",
    "!!binary AAAA", "? [a, b]\n: c", "<<: {x: 1}", "%YAML 1.1\n---\n", "---\n---\n", "...",
    "re:((", "re:(a+)+$", "type:", "  \n  \n", "\r\n", "#", "'", '"', "|", ">",
]  # fmt: skip
HOSTILE_VALUES = [
    "{{ 'a' * 10**9 }}", "{{ 10 ** 10 ** 10 }}", 10**30, -(10**30), 1e308, float("inf"),
    "\x07", [[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]], {"a": {"b": {"c": {"d": {}}}}},
    "re:[", "5:4", "block:0x4", "", None, True, [1, "x", None], "{% for %}",
    "{{ range(100000) | list | length * range(100000) | list | length }}",
]  # fmt: skip


def byte_mutation(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.randint(1, 6)):
        at = rng.randint(0, len(data))
        action = rng.random()
        if action < 0.35:
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
        elif action < 0.6:
            data = data[:at] + data[at + rng.randint(1, 12) :]
        else:
            data = data[:at] + rng.randbytes(rng.randint(1, 6)) + data[at:]
    return data


def splice(rng: random.Random, data: bytes) -> bytes:
    text = data.decode("utf-8")
    lines = text.splitlines(keepends=True)
    at = rng.randrange(len(lines) + 1)
    snippet = rng.choice(HOSTILE)
    if rng.random() < 0.5 and at < len(lines) and ":" in lines[at]:
        key = lines[at].split(":", 1)[0]
        quoted = '"' + snippet.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines[at] = f"{key}: {quoted if rng.random() < 0.5 else snippet}\n"
    else:
        lines.insert(at, snippet + ("\n" if rng.random() < 0.7 else ""))
    return "".join(lines).encode("utf-8", errors="surrogatepass")


def structured(rng: random.Random, data: bytes) -> bytes:
    tree = yaml.safe_load(data)
    node, path = tree, []
    while isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(list(node))
        path.append(key)
        if not isinstance(node[key], dict):
            break
        node = node[key]
    target = tree
    for key in path[:-1]:
        target = target[key]
    target[path[-1] if path else "variables"] = rng.choice(HOSTILE_VALUES)
    return yaml.safe_dump(tree, allow_unicode=True).encode("utf-8", errors="surrogatepass")


YAMLISH = b"abcxyz019_.-+: \n\t[]{},&*!|>'\"%@`#?{{}}"


def random_bytes(rng: random.Random) -> bytes:
    """Any bytes, or bytes from the characters YAML and jinja2 give meaning to."""
    size = rng.randint(0, 300)
    if rng.random() < 0.5:
        return rng.randbytes(size)
    return bytes(rng.choice(YAMLISH) for _ in range(size))


KINDS = {
    "byte mutations": byte_mutation,
    "hostile splices": splice,
    "structured values": structured,
    "random bytes": lambda rng, base: random_bytes(rng),
}


def cases(kind: str, count: int = 1500, seed: int = 17):
    rng = random.Random(f"{seed}-{kind}")
    corpus = [text.encode("utf-8") for _, text in sorted(shipped_recipes().items())]
    for index in range(count):
        yield KINDS[kind](rng, corpus[index % len(corpus)])


class CaseTimeout(Exception):
    pass


def _timeout(signum, frame):
    raise CaseTimeout


def load_or_locate(data: bytes) -> None:
    try:
        load_recipe_text(decode_recipe(data, SOURCE), SOURCE)
    except RecipeError as error:
        text = str(error)
        assert text.startswith(f"Recipe {SOURCE} has"), text
        assert len(LOCATED.findall(text)) == len(error.problems), text


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_byte_string_loads_or_is_a_located_recipe_error(kind):
    previous = signal.signal(signal.SIGALRM, _timeout)
    memory_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for index, data in enumerate(cases(kind)):
            signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
            try:
                load_or_locate(data)
            except CaseTimeout:
                pytest.fail(f"case {index} did not finish in {WATCHDOG_SECONDS} s: {data!r}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - memory_before) / 1024
    assert grown_mib < 256, grown_mib

"""The recipe reference in docs/recipes.md is generated from the schema and must not drift."""

from pathlib import Path

from acdc_recipe.language.reference import BEGIN, END, SECTIONS, render_reference

RECIPES_PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def test_the_recipes_page_reference_matches_the_schema():
    text = RECIPES_PAGE.read_text(encoding="utf-8")
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == render_reference(), (
        "run: python -m acdc_recipe.language.reference --write docs/recipes.md"
    )


def test_every_field_of_every_section_is_documented():
    rendered = render_reference()
    for _, model in SECTIONS:
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in rendered
            assert field.description, f"{model.__name__}.{name} has no description"

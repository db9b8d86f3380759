"""Integrations with the trainers people already use; each is an optional extra.

- `acdc_recipe.integrations.huggingface`: `AcdcCallback` for transformers' `Trainer`
  (``pip install 'acdc-recipe[hf]'``).
- `acdc_recipe.integrations.lightning`: `AcdcCallback` for Lightning's `Trainer`
  (``pip install 'acdc-recipe[lightning]'``).

Both compile the recipe against the trainer's model and attach the engine to the optimizer the
trainer built; they use the engine (`acdc_recipe.runtime`) and nothing uses them. Importing
this package imports neither transformers nor lightning.
"""

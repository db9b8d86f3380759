"""The recipes shipped with acdc-recipe, loadable by name (e.g. `acdc run quickstart`)."""

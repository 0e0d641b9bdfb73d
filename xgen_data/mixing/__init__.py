"""Recipes, mixtures (sampling proportions, effective tokens, epochs), decisions derived per recipe, the recipe flow."""

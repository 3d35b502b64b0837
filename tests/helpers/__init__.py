"""Helpers shared by the tests: op input makers and tolerances (ops), tiny training runs (train), the small MNIST CNN recipe (mnist_recipe)."""

"""`python -m dsvl_jax.evaluate`: see dsvl_jax/cli/evaluate.py."""

from dsvl_jax.cli.evaluate import entry

if __name__ == "__main__":
    entry()

"""`python -m dsvl_jax.train`: see dsvl_jax/cli/train.py."""

from dsvl_jax.cli.train import entry

if __name__ == "__main__":
    entry()

"""`python -m dsvl_jax.plot`: see dsvl_jax/cli/plot.py."""

from dsvl_jax.cli.plot import entry

if __name__ == "__main__":
    entry()

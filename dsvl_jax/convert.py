"""`python -m dsvl_jax.convert`: see dsvl_jax/cli/convert.py."""

from dsvl_jax.cli.convert import entry

if __name__ == "__main__":
    entry()

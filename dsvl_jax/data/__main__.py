"""`python -m dsvl_jax.data prepare|generate|inspect`: see dsvl_jax/cli/data.py."""

from dsvl_jax.cli.data import entry

if __name__ == "__main__":
    entry()

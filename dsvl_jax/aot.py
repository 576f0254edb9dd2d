"""`python -m dsvl_jax.aot`: see dsvl_jax/cli/aot.py."""

from dsvl_jax.cli.aot import entry

if __name__ == "__main__":
    entry()

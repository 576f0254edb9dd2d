"""`python -m dsvl_jax.sweep`: see dsvl_jax/cli/sweep.py."""

from dsvl_jax.cli.sweep import entry

if __name__ == "__main__":
    entry()

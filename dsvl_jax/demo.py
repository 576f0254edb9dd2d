"""`python -m dsvl_jax.demo`: see dsvl_jax/cli/demo.py."""

from dsvl_jax.cli.demo import entry

if __name__ == "__main__":
    entry()

"""`python -m dsvl_jax.rehearse`: see dsvl_jax/cli/rehearse.py."""

from dsvl_jax.cli.rehearse import entry

if __name__ == "__main__":
    entry()

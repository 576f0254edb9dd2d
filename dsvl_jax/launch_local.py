"""`python -m dsvl_jax.launch_local`: see dsvl_jax/cli/launch_local.py."""

from dsvl_jax.cli.launch_local import entry

if __name__ == "__main__":
    entry()

"""`python -m dsvl_jax.chat`: see dsvl_jax/cli/chat.py."""

from dsvl_jax.cli.chat import entry

if __name__ == "__main__":
    entry()

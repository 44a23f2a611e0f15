"""Temporary alias of lora_edu.toy.data (removed when the move is complete)."""
from lora_edu.toy.data import *  # noqa: F401,F403
from lora_edu.toy.data import __all__  # noqa: F401

"""Temporary alias of lora_edu.toy.training (removed when the move is complete)."""
from lora_edu.toy.training import *  # noqa: F401,F403
from lora_edu.toy.training import __all__  # noqa: F401

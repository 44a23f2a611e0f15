"""Temporary alias of lora_edu.toy.model (removed when the move is complete)."""
from lora_edu.toy.model import *  # noqa: F401,F403
from lora_edu.toy.model import __all__  # noqa: F401

"""Temporary alias of lora_edu.inject (removed when the move is complete)."""
from lora_edu.inject import *  # noqa: F401,F403
from lora_edu.inject import __all__  # noqa: F401

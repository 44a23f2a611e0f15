"""Temporary alias of lora_edu.checks (removed when the move is complete)."""
from lora_edu.checks import *  # noqa: F401,F403
from lora_edu.checks import __all__  # noqa: F401

"""What every layer shares: the error a user can fix, and the constants of the data and the network.

The bottom of the stack: it imports nothing of the project, so data.py and model.py can use it as lib/ does.
"""
from __future__ import annotations

MEAN, STD = 0.1307, 0.3081  # of the 60,000 MNIST training images, pixels scaled to [0, 1]
INPUT_SIZE = 32
NUM_CLASSES = 10


class UserError(Exception):
    """A problem the user can fix; printed as one line on stderr, never as a traceback."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

"""An ArgumentParser whose errors are one line and a hint, not the whole usage text."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """``error`` prints ``prog: error: message`` and where the flags are listed; ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n(python {self.prog} --help lists every flag)\n")


def fail(message: str) -> NoReturn:
    """Stop a script with ``error: message`` on stderr and exit status 1."""
    sys.exit(f"error: {message}")

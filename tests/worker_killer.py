"""A character tokenizer whose process dies (SIGKILL, as the out-of-memory killer does) when it meets the word
KILL: tests/test_prepare.py hands it to preparation's worker processes, which import it from here (a module
that imports nothing heavy, so a worker starts in a fraction of a second)."""

from __future__ import annotations

import os
import signal

from nanogpt_runner.data.tokenizers import CharTokenizer


class KilledByKILL(CharTokenizer):
    def encode(self, text: str):
        if "KILL" in text:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode(text)

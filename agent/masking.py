"""Masking secret values in a byte stream, as `***`, before they reach the spool file.

Streaming: a secret split across two reads is still masked. Only a suffix that could still
become a secret is held back, so ordinary output is not delayed.
"""

import os
import re
import threading

MASK = b"***"


class Masker:
    def __init__(self, secrets: list[bytes]):
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # Longest first: at one position the longest secret wins.
        self._pattern = (
            re.compile(b"|".join(re.escape(s) for s in self._secrets)) if (self._secrets) else None
        )
        self._carry = b""

    def _held(self, data: bytes) -> int:
        """Length of the longest suffix of `data` that is a proper prefix of a secret."""
        longest = max((len(s) for s in self._secrets), default=0)
        for k in range(min(longest - 1, len(data)), 0, -1):
            tail = data[-k:]
            if any(len(s) > k and s.startswith(tail) for s in self._secrets):
                return k
        return 0

    def feed(self, data: bytes) -> bytes:
        """Masked bytes that are final now; the rest waits for more data or flush()."""
        if self._pattern is None:
            return data
        data = self._carry + data
        limit = len(data) - self._held(data)
        out, pos = [], 0
        for match in self._pattern.finditer(data):
            if match.start() >= limit:
                break
            out += [data[pos : match.start()], MASK]
            pos = match.end()
        done = max(pos, limit)
        out.append(data[pos:done])
        self._carry = data[done:]
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the stream: whatever was held back, masked."""
        rest, self._carry = self._carry, b""
        return self._pattern.sub(MASK, rest) if self._pattern else rest


class MaskingPipe:
    """A pipe for a job's stdout and stderr whose reader thread masks secrets and appends
    the result to the spool file. Used only when the run carries secrets; otherwise steps
    write straight into the spool file."""

    def __init__(self, spool_fd: int, secrets: list[bytes]):
        self._read_fd, self.write_fd = os.pipe()
        self._spool_fd = spool_fd
        self._masker = Masker(secrets)
        self._thread = threading.Thread(target=self._pump, name="mask", daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._spool_fd, view) :]

    def _pump(self) -> None:
        try:
            while chunk := os.read(self._read_fd, 1 << 16):
                self._write(self._masker.feed(chunk))
            self._write(self._masker.flush())
        finally:
            os.close(self._read_fd)

    def finish(self, timeout: float = 10.0) -> None:
        """Close our end and wait for the rest to be written. A process that escaped the
        job's process groups may hold the pipe open; its later output is not waited for."""
        os.close(self.write_fd)
        self._thread.join(timeout)

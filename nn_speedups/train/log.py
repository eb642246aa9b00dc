"""Progress and log lines of a training run."""

from __future__ import annotations

import sys

from nn_speedups.train.config import TrainConfig


class Progress:
    """tqdm on stderr when importable, else a one-line '\\r' progress; nothing when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.done, self.bar = total, desc, enabled, 0, None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            sys.stderr.write(f"\r{self.desc} {self.done}/{self.total} {status}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\r" + " " * (len(self.desc) + 60) + "\r")
            sys.stderr.flush()


def say(config: TrainConfig, text: str) -> None:
    if not config.quiet:
        print(text, flush=True)

"""A directory laid out as the kubelet mounts a Secret volume: each key is a symlink through `..data`
to a timestamped directory, and an update swaps `..data` in one rename (so the file's inode changes
while its path does not)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


class SecretVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def write(self, **keys: str) -> None:
        """Publishes exactly these keys (a key left out disappears, as when it leaves the Secret)."""
        version = self.root / f"..{time.time_ns()}"
        version.mkdir()
        for key, content in keys.items():
            (version / key).write_text(content)
        data = self.root / "..data"
        old = data.resolve() if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(version.name, tmp)
        os.replace(tmp, data)
        for key in keys:
            link = self.root / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        for link in self.root.iterdir():
            if link.is_symlink() and not link.name.startswith("..") and link.name not in keys:
                link.unlink()
        if old is not None:
            shutil.rmtree(old)

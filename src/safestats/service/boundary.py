"""What a deployed service checks before it serves: that only it can read what it guards.

The census of real pupils, the service's secret key and its signing key must not be readable by
other operating-system users (the analysts' JupyterLab runs as one of them): a file any other
user can read, or a folder any other user can list and enter, refuses the start, naming each.
The synthetic census (its manifest says ``synthetic: true``) is exempt, so the demo and the
tests run from a checkout; the keys never are.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from pathlib import Path

from safestats.config import Settings
from safestats.dataset import Dataset, is_synthetic
from safestats.errors import ConfigError

__all__ = ["check_private", "exposed"]


def exposed(paths: Iterable[Path]) -> list[str]:
    """The paths (and their folders) that users other than the owner and group can read."""
    out = []
    for path in paths:
        if not path.exists():
            continue
        mode = path.stat().st_mode
        if path.is_dir():
            if mode & (stat.S_IROTH | stat.S_IXOTH):
                out.append(f"{path}/ (mode {stat.filemode(mode)})")
        elif mode & stat.S_IROTH:
            out.append(f"{path} (mode {stat.filemode(mode)})")
    return out


def check_private(settings: Settings, dataset: Dataset) -> None:
    """Refuse to serve (ConfigError) when the census, the secret key or the signing key is
    readable by other users — the census only when it is not the synthetic one."""
    guarded = [Path(settings.secret_key_file), Path(settings.signing_key_file)]
    if settings.census_kek_file:
        guarded.append(Path(settings.census_kek_file))
    if not is_synthetic(dataset):
        folder = Path(dataset.path)
        guarded += [folder, *sorted(folder.iterdir())]
    found = exposed(guarded)
    if found:
        raise ConfigError(
            "the service will not start while others can read what it guards: "
            + "; ".join(found)
            + " (run it as its own user and chmod o-rwx these)"
        )

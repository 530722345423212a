"""Checks on a command's output path before any model is loaded.

`check_output_location` rejects an output that cannot be written: a path inside a
file, or a folder that cannot be created or written to. `check_output_settings` protects
resumable outputs. `dnpo generate` and `dnpo judge` resume by skipping the ids an
output file contains, but those records are valid only for the settings that wrote
them. So the first run stores its settings in OUTPUT.settings.json, and a rerun
with other settings raises ConfigError instead of keeping the old records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from dnpo.configbase import ConfigError
from dnpo.io import atomic_write_json, read_json

logger = logging.getLogger(__name__)

SETTINGS_SUFFIX = ".settings.json"


def settings_path(output: str | Path) -> Path:
    """Return the settings record of an output file: `generations.jsonl.settings.json`."""
    output = Path(output)
    return output.with_name(output.name + SETTINGS_SUFFIX)


def check_output_location(path: str | Path, option: str = "--output", folder: bool = False) -> Path:
    """Raise ConfigError unless `path` can be written; create its missing parent folders.

    `folder` is True for an output folder (train, label, compare, prepare-model), which
    is created too, and False for an output file.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; choose another {option}")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is a folder, not a file; choose another {option}")
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ConfigError(
                    f"{option} {path} is inside {ancestor}, which is a file, not a folder; "
                    f"choose another {option}"
                )
            break
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the folder {parent} for {option} {path}: {error.strerror}; "
            f"create the parent folder or choose another {option}"
        ) from None
    if not os.access(parent, os.W_OK):
        raise ConfigError(
            f"the folder {parent} for {option} {path} is not writable; choose another {option}"
        )
    # For root, os.access passes even where writes fail (in /proc, say), so a real write
    # decides. An output folder is created here, as its command would create it.
    check_folder_writable(path if folder else parent, path, option)
    return path


def check_folder_writable(folder: Path, path: Path, option: str) -> None:
    """Create `folder` if missing and write a temporary file in it, or raise ConfigError."""
    name = f"{option} {path}" if folder == path else f"the folder {folder} for {option} {path}"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create {name}: {error.strerror}; choose another {option} in a folder "
            "you can write to"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to {name}: {error.strerror}; choose another {option} in a folder "
            "you can write to"
        ) from None


def check_output_settings(
    output: str | Path, settings: dict[str, Any], option: str = "--output"
) -> None:
    """Record `settings` for a new output, or raise ConfigError if an existing one differs.

    An output counts as new while it has no records, so deleting it starts over. An
    output with records but no settings record, as older dnpo versions wrote, is kept
    and the current settings are recorded for it.
    """
    output = Path(output)
    record = settings_path(output)
    settings = json.loads(json.dumps(settings, default=str))
    has_records = output.is_file() and output.stat().st_size > 0
    if has_records and record.is_file():
        try:
            previous = read_json(record)
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict):
            raise ConfigError(
                f"settings record {record} is unreadable; delete it to keep {output} with the "
                "current settings, or delete both to start over"
            )
        changed = [
            f"{key}: {previous.get(key, '<unset>')!r} -> {settings.get(key, '<unset>')!r}"
            for key in sorted(set(previous) | set(settings))
            if previous.get(key, "<unset>") != settings.get(key, "<unset>")
        ]
        if changed:
            raise ConfigError(
                f"{output} was written with other settings ({'; '.join(changed)}); pass "
                f"another {option}, or delete {output} to start over with the new settings"
            )
        return
    if has_records:
        logger.info("%s has no settings record; recording the current settings in %s", output, record)
    atomic_write_json(record, settings)

"""Configuration errors as one short paragraph: what is wrong, which file and key, and the fix.

The console script prints a :class:`ConfigError` without a traceback (set ``R1_LIGHTNING_TRACEBACK=1``
to see one); any other exception keeps its traceback, since it is a bug rather than a bad setting.
"""

from __future__ import annotations

import re
from pathlib import Path


class ConfigError(ValueError):
    """A setting, file or data column that cannot work; the message names it and says what would."""


class MissingPathError(ConfigError, FileNotFoundError):
    """A file or folder the user named that does not exist (also a ``FileNotFoundError`` for callers
    that catch that); printed like any :class:`ConfigError`, without a traceback."""


def config_files(argv: list[str]) -> list[str]:
    """The ``--config``/``-c`` files on a command line, in order.

    >>> config_files(["fit", "--config", "a.yaml", "-c", "b.yaml", "--config=c.yaml", "--x", "1"])
    ['a.yaml', 'b.yaml', 'c.yaml']
    """
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_yaml_file(path: str | Path, what: str = "--config") -> None:
    """Raise a :class:`ConfigError` naming ``path``, line and column when it is not valid YAML (the
    parser's own message says only ``"<unicode string>"``)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} file {str(path)!r} does not exist (relative paths start at {Path.cwd()})")
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{path}{where}: not valid YAML ({problem}); check the indentation and brackets around that line"
        ) from None


def instantiation_message(err: BaseException) -> str:
    """The user's part of a jsonargparse instantiation error: the reasons a class refused its
    arguments, without the union bookkeeping, the Namespace dump and the traceback.

    >>> instantiation_message(ValueError(
    ...     "Does not validate against any of the Union subtypes\\nSubtypes: [...]\\nErrors:\\n"
    ...     "  - `quantization` needs `lora` (QLoRA)\\n  - Expected a <class 'NoneType'>\\n"
    ...     "Given value type: <class 'Namespace'>\\nGiven value: Namespace(a=1)"))
    '`quantization` needs `lora` (QLoRA)'
    """
    text = str(err)
    if "Errors:" not in text:
        return text.strip()
    block = text.split("Errors:", 1)[1].split("\nGiven value", 1)[0]
    reasons = []
    for item in re.split(r"\n\s*- ", "\n" + block):
        item = item.strip()
        if not item or item.startswith("Expected a <class 'NoneType'>"):
            continue
        item = re.sub(r"^Problem with given class_path '[\w.]+':\s*", "", item)
        reasons.append(" ".join(line.strip() for line in item.splitlines()))
    return "; ".join(reasons) or text.strip()

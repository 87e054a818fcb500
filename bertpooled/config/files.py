"""Config files: where a `--config` name is found, and reading its YAML safely (bounded size, aliases and depth,
one-line errors for every way a file can be unreadable). No knowledge of the settings: bertpooled.config
checks those."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bertpooled.errors import BertpooledError

EXPERIMENTS_DIR = Path("experiments")
# The project's own experiment files, for a checkout or editable install run from another folder.
PROJECT_EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
# A config file is a few dozen `key: value` lines. These bounds are checked before YAML builds anything: a
# 700-byte file of nested anchors (a "billion laughs") otherwise expands to gigabytes once a value is printed.
MAX_CONFIG_BYTES = 256 * 1024
MAX_YAML_ALIASES = 32
MAX_YAML_DEPTH = 20


def resolve_config_path(config: str | Path) -> Path:
    """A config argument as given, or a name in `experiments/` (`seed` -> experiments/seed.yaml).

    Names are looked up in ./experiments, then in the project's own experiments/ beside the package, so
    `--config smoke` works from any folder.
    """
    path = Path(config)
    folders = list(dict.fromkeys([EXPERIMENTS_DIR, PROJECT_EXPERIMENTS_DIR]))
    candidates = [path] + [c for folder in folders for c in (folder / path, folder / f"{path}.yaml")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml")})
    hint = f" (experiments here: {', '.join(known)})" if known else ""
    raise BertpooledError(f"config file {config} not found: pass a YAML path or a name in experiments/{hint}")


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """The mapping in a YAML file the user hands in (empty file = no settings): the project's one way to read a
    YAML file (`--config`, `--space`, any later one), bounded in size, aliases and depth. `what` names the file
    in its errors."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise BertpooledError(
                f"{what} {path} is over {MAX_CONFIG_BYTES // 1024} KiB: a config is a few key: value lines; "
                "pass the right file"
            )
        raw = safe_yaml(data.decode("utf-8"), f"{what} {path}")
    except UnicodeDecodeError as exc:
        raise BertpooledError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    except OSError as exc:
        raise BertpooledError(
            f"{what} {path} cannot be read ({exc.strerror or exc}): pass a readable YAML file"
        ) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise BertpooledError(f"{what} {path}{where} is not valid YAML: fix the syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BertpooledError(f"{what} {path} must hold a mapping of settings (key: value)")
    return raw


def safe_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load(text)`, after checking on YAML's event stream (linear in the text, building nothing) that
    it has at most MAX_YAML_ALIASES aliases and nests at most MAX_YAML_DEPTH deep; a one-line error otherwise."""
    aliases = depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise BertpooledError(
                    f"{where}: more than {MAX_YAML_ALIASES} YAML aliases (*name): write the values out"
                )
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise BertpooledError(f"{where}: YAML nested more than {MAX_YAML_DEPTH} deep: settings are key: value")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.safe_load(text)

"""copyguard.common: the shared basics every stage may import (and that import no stage).

- :mod:`copyguard.common.errors`: ``UsageError``/``ConfigError``, printed by the CLI as one line, exit 2;
- :mod:`copyguard.common.config`: YAML configs with ``--set`` overrides, validated by pydantic schemas;
- :mod:`copyguard.common.fileops`: atomic writes and path expansion (local or any fsspec/Beam filesystem);
- :mod:`copyguard.common.fmt`: numbers and Markdown/text tables for reports;
- :mod:`copyguard.common.runtime`: the torch device, CPU threads, and the machine a figure came from.
"""

from copyguard.common.errors import ConfigError, UsageError

__all__ = ["ConfigError", "UsageError"]

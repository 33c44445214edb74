"""Checking diffed sources before a run: what the config names must be in the source.

A mapped column, identifier or high-water mark column the source does not have (or
a query that is not valid SQL) is a mistake in the definition: ``replicad sync``
refuses it as a config error naming the key (``syncs.up.mappings[1].from``), and
``replicad run`` logs it and lets that sync's runs fail (with an alert) while the
other syncs go on: the other app may change its schema back, or the config may be
fixed and reloaded.
"""

from __future__ import annotations

from replicad.daemon.config import Config, ConfigError, Sync
from replicad.daemon.push import diff_spec
from replicad.store.diff import SourceError, check_source, source_connection


def check_diffed_sources(config: Config) -> list[ConfigError]:
    """One error per diffed push sync whose source does not fit its definition (a
    source on a replica that does not exist yet is not checked)."""
    problems: list[ConfigError] = []
    for s in config.syncs.values():
        if s.direction != "push" or s.diffed is None or s.paused:
            continue
        spec = diff_spec(s)
        if spec.database is None and not config.replica_path.exists():
            continue
        try:
            with source_connection(spec, config.replica_path) as src:
                check_source(src, spec)
        except SourceError as e:
            # A column the definition names, or a query that is not SQL, is the
            # config's mistake; anything else (a table gone) is the run's failure.
            if e.missing or "syntax error" in str(e):
                problems.append(ConfigError(_keyed(s, e)))
    return problems


def _keyed(s: Sync, e: SourceError) -> str:
    """The error under the key that names the first missing column."""
    k = f"syncs.{s.label}"
    for column in e.missing:
        for n, m in enumerate(s.mappings):
            if m.column == column:
                return f"{k}.mappings[{n}].from: {e}"
        if column == s.high_water_mark:
            return f"{k}.high_water_mark_attributes.column: {e}"
    return f"{k}.source: {e}"

"""Configuration: models, loading with errors that say where and how to fix, ossec.conf import."""

from dfir_ar.config.load import DEFAULT_CONFIG, LoadedConfig, config_path, load_config
from dfir_ar.config.models import (
    ActiveResponseConfig,
    CommandConfig,
    Config,
    EvidenceConfig,
    GlobalConfig,
    Location,
    Matching,
    Protocol,
    SourceConfig,
)

__all__ = [
    "DEFAULT_CONFIG",
    "ActiveResponseConfig",
    "CommandConfig",
    "Config",
    "EvidenceConfig",
    "GlobalConfig",
    "LoadedConfig",
    "Location",
    "Matching",
    "Protocol",
    "SourceConfig",
    "config_path",
    "load_config",
]

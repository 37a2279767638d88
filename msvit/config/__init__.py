"""Settings: the table of every setting (`settings`), reading a recipe and the command line (`parse`), checking
values and model arguments (`checks`), and what a run saves and a checkpoint restores (`saved`)."""
from ..errors import ConfigError
from .checks import (accepted_types, architecture_kwargs, check_config, check_model_kwargs, check_value,
                     key_suggestion, model_arguments, model_kwargs, option_flag, yaml_flow)
from .parse import (EVALUATION_KEYS, ArgumentParser, command_line_keys, folder_recipes, load_config, parse_args,
                    parse_model_kwargs, print_keys, print_program_help)
from .saved import restore_model_settings, restore_run_settings, save_config, warn_other_dataset
from .settings import CHOICES, COMPILE_MODES, DEFAULTS, GROUPS, MODEL_KEYS, NETWORK_KEYS, NO_EFFECT, SETTINGS, TYPES

__all__ = ["DEFAULTS", "SETTINGS", "GROUPS", "TYPES", "CHOICES", "MODEL_KEYS", "NETWORK_KEYS", "NO_EFFECT",
           "COMPILE_MODES", "ConfigError", "ArgumentParser", "load_config", "parse_args", "parse_model_kwargs",
           "check_config", "check_model_kwargs", "check_value", "command_line_keys", "model_arguments", "model_kwargs",
           "architecture_kwargs", "accepted_types", "key_suggestion", "option_flag", "yaml_flow", "folder_recipes",
           "restore_model_settings", "restore_run_settings", "save_config", "warn_other_dataset",
           "EVALUATION_KEYS", "print_keys", "print_program_help"]

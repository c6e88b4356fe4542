"""What ``main.py`` and ``visualize.py`` share on the command line: one-line errors, help with defaults, argument
types."""

from __future__ import annotations

import argparse

_BOOLEANS = dict.fromkeys(("true", "yes", "1", "on", "y", "t"), True) | dict.fromkeys(
    ("false", "no", "0", "off", "n", "f"), False
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults in the help, except where there is none (the text then says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if (
            action.default is None
            or action.default is argparse.SUPPRESS
            or (isinstance(action.default, bool) and action.nargs == 0)
        ):
            return action.help or ""
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bool_flag(value: str) -> bool:
    """``true/false/yes/no/1/0/on/off`` in any case."""
    lowered = str(value).strip().lower()
    if lowered not in _BOOLEANS:
        raise argparse.ArgumentTypeError(f"expected true/false/yes/no/1/0, got {value!r}")
    return _BOOLEANS[lowered]


def positive_int(value: str) -> int:
    """A whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return number


def pretrained_flag(value: str) -> bool | str:
    """A boolean, or the path of a local copy of torchvision's ImageNet AlexNet weights."""
    return _BOOLEANS.get(str(value).strip().lower(), value)


def text_list(value: str) -> str | list[str]:
    """One value, or several separated by commas (``BMW,Audi``)."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected a value or a comma-separated list, got {value!r}")
    return parts[0] if len(parts) == 1 else parts


def year_list(value: str) -> int | list[int]:
    """A year, or several separated by commas (``2011,2012``)."""
    try:
        years = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        years = []
    if not years:
        raise argparse.ArgumentTypeError(f"expected a year such as 2012, or several such as 2011,2012; got {value!r}")
    return years[0] if len(years) == 1 else years

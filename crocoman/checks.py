"""Argument checks shared by the data writers (synthetic world and converters)."""


def check_at_least(caller: str, **values_and_minimums: tuple[int, int]) -> None:
    """Refuse sizes below their minimum, naming the argument: (value, minimum) per name."""
    for name, (value, minimum) in values_and_minimums.items():
        if value < minimum:
            raise ValueError(f"{caller}: {name}={value}, needs at least {minimum}")

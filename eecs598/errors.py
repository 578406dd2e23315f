"""Errors shared by every wing (this module imports nothing of the package)."""

__all__ = ["SettingError"]


class SettingError(ValueError):
    """A setting with a value it cannot take.

    ``str(error)`` is ``"<where>: <field> <requirement>"`` (e.g. ``"train_detector: learning_rate must be a
    finite number > 0, got nan"``); the command line shows ``requirement`` after its own flag for ``field``
    (``"--lr must be a finite number > 0, got nan"``), so both say the same thing.

    Attributes:
        where: the function or class that refused it.
        field: the setting's name, e.g. ``"learning_rate"`` or ``"loss_weights['loss_cls']"``.
        requirement: what the value must be, and the value given.
    """

    def __init__(self, where: str, field: str, requirement: str):
        super().__init__(f"{where}: {field} {requirement}")
        self.where, self.field, self.requirement = where, field, requirement

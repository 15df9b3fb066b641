from typing import Any

from django.core.management.base import BaseCommand, CommandError

import messagebus


class BusCommand(BaseCommand):
    """A management command that hands one command to the bus."""

    def issue(self, command: messagebus.Command) -> Any:
        """``bus.handle(command)``; a rejected command becomes a ``CommandError``."""
        try:
            return messagebus.bus.handle(command)
        except messagebus.CommandRejected as exc:
            raise CommandError(str(exc)) from exc

"""How the allocation service tells people about stock: the ``notifications`` dependency."""

from typing import Protocol

from django.core.mail import send_mail


class Notifications(Protocol):
    def send(self, destination: str, message: str) -> None: ...


class EmailNotifications:
    """Send each notification as an email whose subject and body are the message."""

    def send(self, destination: str, message: str) -> None:
        send_mail(subject=message, message=message, from_email=None, recipient_list=[destination])

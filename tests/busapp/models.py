from django.db import models

import messagebus

from .events import Deposited, Opened


class Account(messagebus.Aggregate, models.Model):
    name = models.CharField(max_length=50, unique=True)
    balance = models.IntegerField(default=0)

    def __str__(self) -> str:
        return self.name

    def open(self) -> None:
        self.record(Opened(name=self.name))

    def deposit(self, amount: int) -> None:
        self.balance += amount
        self.record(Deposited(name=self.name, amount=amount))


class Entry(models.Model):
    """Written by event handlers: what they saw."""

    account = models.CharField(max_length=50)
    amount = models.IntegerField()
    note = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"{self.note} {self.account} {self.amount}"

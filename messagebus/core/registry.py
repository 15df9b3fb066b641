"""Which function handles which message.

Each installed app's ``handlers`` module is imported from ``ready()``; its
``@handler`` functions register themselves here. The message type is the
first parameter's annotation unless given; the other parameters name the
dependencies the bus passes in (``uow``, ``bus``, MESSAGEBUS["DEPENDENCIES"]).
A handler may be ``async def``: it runs on an event loop, outside any
transaction, so it cannot take ``uow``. A query's one handler has no unit of
work either: it reads, and answers. An event handler registered with
``run="in_transaction"`` is not delivered from the outbox: the unit of work
that records its event calls it as it ends, before commit (read models).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol, TypeVar, overload

from asgiref.sync import iscoroutinefunction

from ..exceptions import HandlerAlreadyRegistered, HandlerNotFound, RegistrationError
from .messages import BASES, Command, Event, Message, Query
from .policy import IN_TRANSACTION, OVERRIDABLE, WAIT

F = TypeVar("F", bound=Callable[..., Any])
KEYED = ("ordering_key", "concurrency_key")  # the options that name a delivery's key


class Bulk(Protocol):
    """How a handler takes a worker's claimed deliveries of it together (a broker's
    batched publish): each message prepared in its delivery's span, then all sent at
    once, with an answer for each."""

    def prepare(self, message: Any) -> Any:
        """What ``send`` takes for ``message``; raising fails its delivery only."""

    def send(self, prepared: list[Any]) -> Sequence[BaseException | None]:
        """Send them all: per item, in order, None once it is done with, or the error
        that says why not (raising fails them all)."""


@dataclass(frozen=True)
class Handler:
    func: Callable[..., Any]
    message_type: type[Message]
    name: str
    # Parameters after the message: (name, has a default).
    parameters: tuple[tuple[str, bool], ...]
    # Its delivery policy's overrides (event handlers): @handler(max_deliveries=10).
    options: tuple[tuple[str, Any], ...] = ()
    # ``async def``: awaited on an event loop, never inside a transaction.
    is_async: bool = False
    # Takes a worker's claimed deliveries together (``delivery.bulk``), outside a transaction.
    bulk: Bulk | None = None

    @property
    def in_transaction(self) -> bool:
        """Called inside the transaction that records its event, not delivered after."""
        return ("run", IN_TRANSACTION) in self.options

    @property
    def ordered(self) -> bool:
        """Its deliveries of one key run one at a time, in the order their events committed."""
        return any(option == "ordering_key" and field for option, field in self.options)

    def key_of(self, message: Message) -> str:
        """Its delivery's key: the value of the field its ``ordering_key`` option (or else
        its ``concurrency_key``) names, as text ("" for None, or with no such option)."""
        for option, field in self.options:  # never both (``manage.py check``)
            if option in KEYED and field is not None:
                value = getattr(message, field, None)
                return "" if value is None else str(value)
        return ""

    def __str__(self) -> str:
        return self.name


class Registry:
    def __init__(self) -> None:
        self._commands: dict[type[Message], Handler] = {}
        self._queries: dict[type[Message], Handler] = {}
        self._events: dict[type[Message], tuple[Handler, ...]] = {}  # after commit
        self._inline: dict[type[Message], tuple[Handler, ...]] = {}  # in the transaction
        # Process managers by name: the class, and the handler of the commands it sends.
        self._processes: dict[str, tuple[type, Handler]] = {}
        self._by_name: dict[str, Handler] | None = None  # built on first use
        self._capped: tuple[tuple[str, int], ...] | None = None  # built on first use
        self._ordered: tuple[tuple[str, bool], ...] | None = None  # built on first use

    def register(
        self,
        message_type: type[Message] | None,
        func: F,
        *,
        name: str | None = None,
        bulk: Bulk | None = None,
        **options: Any,
    ) -> F:
        """Register ``func`` for ``message_type`` (None: its first annotation).

        ``name`` is what deliveries remember the handler by (default: its
        dotted path; for a callable object, its class's); give one to keep
        pending deliveries when it moves, or to register two objects of one class.
        ``options`` override an event handler's delivery policy:
        ``retry_attempts``, ``max_deliveries``, ``redelivery_delay``,
        ``batch=False`` for a transaction of its own per delivery,
        ``timeout`` (seconds) for an async one, ``breaker``, ``max_concurrency``
        (at most that many deliveries at once, across every process) and
        ``concurrency_key`` (a field of the message: at most that many per value),
        ``ordering_key`` (a field of the message: its deliveries of one value one at a
        time, in commit order; the message class's ``ordering_key`` by default, None for
        none) and
        ``dead_head="proceed"`` (the rest of a key go on past a dead delivery),
        and ``run="in_transaction"`` to be called inside the transaction that
        records the event instead. ``bulk``: how a worker sends its claimed deliveries
        of this handler together (``Bulk``); each runs through ``func`` elsewhere.
        """
        handler = _inspect(func, message_type, name, options)
        if bulk is not None:
            handler = replace(handler, bulk=bulk)
        cls = handler.message_type
        if issubclass(cls, Command | Query):
            ones = self._commands if issubclass(cls, Command) else self._queries
            existing = ones.get(cls)
            if existing is not None:
                raise HandlerAlreadyRegistered(
                    f"The {_kind(cls)} {cls.__qualname__} already has a handler, "
                    f"{existing}; {handler} cannot be registered for it too"
                )
            ones[cls] = handler
        else:
            if any(h.name == handler.name for h in self._all(cls)):
                raise HandlerAlreadyRegistered(
                    f"{handler} is already registered for the event {cls.__qualname__} "
                    "(two objects of one class: give each a name=)"
                )
            kind = self._inline if handler.in_transaction else self._events
            kind[cls] = (*kind.get(cls, ()), handler)
        self._by_name = self._capped = self._ordered = None
        return func

    def register_process(self, name: str, process: type, steps: Callable[..., Any]) -> None:
        """Register the process manager ``process`` (``messagebus.sagas``) under ``name``:
        the commands it sends are stored for ``name`` (``outbox.store_due(sender=...)``), and
        their deliveries run ``steps(command, uow)``, one at a time per instance."""
        options = (("max_concurrency", 1),)
        self._processes[name] = (process, Handler(steps, Command, name, (("uow", False),), options))
        self._by_name = self._capped = None

    def processes(self) -> list[type]:
        """The process managers registered, by name."""
        return [process for _, (process, _) in sorted(self._processes.items())]

    def unregister(self, func: Callable[..., Any]) -> None:
        self._commands = {t: h for t, h in self._commands.items() if h.func is not func}
        self._queries = {t: h for t, h in self._queries.items() if h.func is not func}
        self._events = {
            t: tuple(h for h in hs if h.func is not func) for t, hs in self._events.items()
        }
        self._inline = {
            t: tuple(h for h in hs if h.func is not func) for t, hs in self._inline.items()
        }
        self._by_name = self._capped = self._ordered = None

    def command_handler(self, cls: type[Message]) -> Handler:
        handler = self._commands.get(cls)
        if handler is None:
            raise HandlerNotFound(cls)
        return handler

    def query_handler(self, cls: type[Message]) -> Handler:
        handler = self._queries.get(cls)
        if handler is None:
            raise HandlerNotFound(cls, "query")
        return handler

    def event_handlers(self, cls: type[Message]) -> tuple[Handler, ...]:
        """The handlers of event ``cls`` delivered after commit, from the outbox."""
        return self._events.get(cls, ())

    def transaction_handlers(self, cls: type[Message]) -> tuple[Handler, ...]:
        """The handlers of event ``cls`` called inside the transaction that records it."""
        return self._inline.get(cls, ())

    def event_handler(self, cls: type[Message], name: str) -> Handler | None:
        """The handler of a delivery of ``cls``: one delivered after commit, or one that
        runs in the transaction now (a delivery stored before it did still runs once)."""
        return next((h for h in self._all(cls) if h.name == name), None)

    def delivered_by(self, cls: type[Message], name: str) -> Handler | None:
        """The handler a delivery of a ``cls`` to ``name`` runs: an event handler's (as
        ``event_handler``); for a command (scheduled), one that hands it to ``bus.handle``
        in the delivery's unit of work, while the command's handler is still ``name``; for
        a command a process manager sent (stored for its name), the process's steps."""
        if not issubclass(cls, Command):
            return self.event_handler(cls, name)
        handler = self._commands.get(cls)
        if handler is None or handler.name != name:
            process = self._processes.get(name)
            return None if process is None else process[1]
        return Handler(_handle_command, cls, name, (("uow", False), ("bus", False)))

    def _all(self, cls: type[Message]) -> tuple[Handler, ...]:
        return self._events.get(cls, ()) + self._inline.get(cls, ())

    def named(self, name: str) -> Handler | None:
        """The event handler registered under ``name``, whatever its event (or the steps of
        the process manager of that name)."""
        if self._by_name is None:
            every = [*self._events.values(), *self._inline.values(), self._steps()]
            self._by_name = {h.name: h for hs in reversed(every) for h in hs}
        return self._by_name.get(name)

    def capped(self) -> tuple[tuple[str, int], ...]:
        """The handlers delivered after commit with a ``max_concurrency``, by name: (name,
        most at once), sorted. (One not a whole number of at least 1 caps nothing:
        ``manage.py check`` says so.)"""
        if self._capped is None:
            found = {
                h.name: most
                for hs in (*self._events.values(), self._steps())
                for h in hs
                if isinstance(most := dict(h.options).get("max_concurrency"), int)
                and not isinstance(most, bool)
                and most >= 1
            }
            self._capped = tuple(sorted(found.items()))
        return self._capped

    def ordered(self) -> tuple[tuple[str, bool], ...]:
        """The handlers delivered after commit with an ``ordering_key``, by name: (name,
        whether a key waits behind its dead first delivery), sorted."""
        if self._ordered is None:
            found = {
                h.name: dict(h.options).get("dead_head", WAIT) == WAIT
                for hs in self._events.values()
                for h in hs
                if h.ordered
            }
            self._ordered = tuple(sorted(found.items()))
        return self._ordered

    def _steps(self) -> tuple[Handler, ...]:
        return tuple(steps for _, steps in self._processes.values())

    def handlers(self) -> Iterator[Handler]:
        yield from self._commands.values()
        yield from self._queries.values()
        for handlers in (*self._events.values(), *self._inline.values()):
            yield from handlers

    def reset(self) -> None:
        """Forget every handler (tests; autodiscovery does not run again)."""
        self._commands, self._queries, self._events, self._inline = {}, {}, {}, {}
        self._processes = {}
        self._by_name = self._capped = self._ordered = None

    @contextmanager
    def temporary(self, *funcs: Callable[..., Any]) -> Iterator[Registry]:
        """Register ``funcs`` (and anything registered inside) until the block ends."""
        saved = dict(self._commands), dict(self._queries), dict(self._events), dict(self._inline)
        processes = dict(self._processes)
        try:
            for func in funcs:
                self.register(None, func)
            yield self
        finally:
            self._commands, self._queries, self._events, self._inline = saved
            self._processes = processes
            self._by_name = self._capped = self._ordered = None


def _kind(cls: type[Message]) -> str:
    return "query" if issubclass(cls, Query) else "command"


def _handle_command(command: Command, uow: Any, bus: Any) -> Any:
    """A scheduled command's delivery: the command handled, in the delivery's transaction."""
    return bus.handle(command, using=uow.alias)


def _inspect(
    func: Callable[..., Any],
    message_type: type[Message] | None,
    name: str | None,
    options: dict[str, Any],
) -> Handler:
    if name is None:
        name = _default_name(func)
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        raise RegistrationError(f"{name} is a generator: a handler returns, it does not yield")
    is_async = _is_async(func)
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError) as exc:
        raise RegistrationError(f"{name} cannot be inspected: {exc}") from None
    if not params or params[0].kind not in (
        params[0].POSITIONAL_ONLY,
        params[0].POSITIONAL_OR_KEYWORD,
    ):
        raise RegistrationError(f"{name} must take the message as its first parameter")
    if message_type is None:
        annotated = func if _is_function_like(func) else type(func).__call__
        try:
            message_type = typing.get_type_hints(annotated).get(params[0].name)
        except NameError as exc:
            raise RegistrationError(f"{name}: cannot resolve annotations ({exc})") from None
        if message_type is None:
            raise RegistrationError(
                f"{name}: annotate the first parameter with the message type, "
                "or pass the type explicitly"
            )
    if not (isinstance(message_type, type) and issubclass(message_type, Command | Event | Query)):
        raise RegistrationError(f"{name}: {message_type!r} is not a Command, Event or Query class")
    if message_type in BASES:
        raise RegistrationError(
            f"{name}: handlers are found by the message's exact class, "
            f"so none would reach a handler of {message_type.__name__}"
        )
    rest = tuple((p.name, p.default is not p.empty) for p in params[1:])
    variadic = [p.name for p in params[1:] if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        raise RegistrationError(f"{name}: *{variadic[0]} cannot be injected; name each dependency")
    if is_async and "uow" in dict(rest):
        raise RegistrationError(
            f"{name} is async, so it runs outside any transaction and cannot take 'uow': "
            "do its database work in a command (await bus.ahandle(...)) or in a sync "
            "function called with asgiref's sync_to_async"
        )
    if issubclass(message_type, Query) and "uow" in dict(rest):
        raise RegistrationError(
            f"{name} answers a query, so it runs with no unit of work and cannot take "
            "'uow': it reads (the ORM, a read model) and returns its answer"
        )
    if not is_async and "timeout" in options:
        raise RegistrationError(
            f"{name}: timeout is for async handlers; a sync one cannot be cancelled"
        )
    if options.get("run") == IN_TRANSACTION and (is_async or "bus" in dict(rest)):
        raise RegistrationError(
            f"{name} runs in the transaction that records its event, so it can be neither "
            "async nor take 'bus' (a command inside another's transaction): keep it to "
            "derived data, and leave the rest to a handler delivered after commit"
        )
    unknown = sorted(set(options) - set(OVERRIDABLE))
    if unknown:
        raise RegistrationError(
            f"{name}: unknown option {', '.join(unknown)}; use {', '.join(OVERRIDABLE)}"
        )
    ordering = getattr(message_type, "ordering_key", None)
    if ordering and issubclass(message_type, Event) and options.get("run") != IN_TRANSACTION:
        options = {"ordering_key": ordering, **options}  # the message's, unless overridden
    # Hashable, as policies are cached by their options: a dict value as its items.
    frozen = {k: tuple(sorted(v.items())) if isinstance(v, dict) else v for k, v in options.items()}
    return Handler(func, message_type, name, rest, tuple(sorted(frozen.items())), is_async)


def _is_function_like(func: Callable[..., Any]) -> bool:
    """A function, method or class (named by its own ``__qualname__``), through wrappers."""
    target = inspect.unwrap(func)
    return inspect.isroutine(target) or isinstance(target, type)


def _default_name(func: Callable[..., Any]) -> str:
    """The dotted path of a function, or of a callable object's class (not of a
    ``functools.partial``'s, or a builtin's: those name nothing of their own)."""
    if _is_function_like(func):
        qualname = getattr(func, "__qualname__", None)
        if qualname is not None:
            return f"{func.__module__}.{qualname}"
    elif not isinstance(func, partial) and type(func).__module__ != "builtins":
        cls = type(func)
        return f"{cls.__module__}.{cls.__qualname__}"
    raise RegistrationError(f"{func!r} has no name of its own: register it with a name=")


def _is_async(func: Callable[..., Any]) -> bool:
    """``async def``, seen through decorators that wrap it and on callable objects."""
    target = inspect.unwrap(func)
    call = target if inspect.isroutine(target) else getattr(target, "__call__", None)  # noqa: B004
    return iscoroutinefunction(target) or (call is not None and iscoroutinefunction(call))


registry = Registry()


@overload
def handler(func: F, /) -> F: ...
@overload
def handler(
    message_type: type[Message] | None = None,
    /,
    *,
    name: str | None = None,
    **options: Any,
) -> Callable[[F], F]: ...
def handler(target: Any = None, /, *, name: str | None = None, **options: Any) -> Any:
    """Register a handler: ``@handler``, ``@handler(MessageType)``, ``@handler(name="...")``,
    ``@handler(max_deliveries=10, retry_attempts=1, batch=False)``."""
    if target is None or isinstance(target, type):
        return lambda func: registry.register(target, func, name=name, **options)
    return registry.register(None, target, name=name, **options)

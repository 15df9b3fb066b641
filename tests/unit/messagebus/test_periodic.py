"""Periodic schedules: their ticks, and what a late tick gets."""

import datetime as dt
import zoneinfo

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

import messagebus
from messagebus.core.periodic import LATE, Periodic, of_setting, schedules
from messagebus.exceptions import ScheduleError
from tests.busapp.events import Reminded

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def every_minute(missed: str = "once") -> Periodic:
    return Periodic("s", "* * * * *", lambda tick: Reminded(n=tick.minute), "UTC", missed)


def at(hour: int, minute: int, second: float = 0) -> dt.datetime:
    return dt.datetime(2026, 3, 2, hour, minute, tzinfo=UTC) + dt.timedelta(seconds=second)


def test_the_latest_tick_is_at_or_before_now_and_the_following_one_after():
    schedule = every_minute()
    assert schedule.latest(at(10, 5)) == at(10, 5)
    assert schedule.latest(at(10, 5, 59.9)) == at(10, 5)
    assert schedule.latest(at(10, 4, 59.9)) == at(10, 4)
    assert schedule.following(at(10, 5)) == at(10, 6)
    assert schedule.following(at(10, 5, 0.5)) == at(10, 6)


def test_a_tick_on_time_is_sent_once():
    schedule = every_minute()
    assert schedule.due(None, at(10, 5, 2)) == (at(10, 5), True)
    assert schedule.due(at(10, 5), at(10, 5, 30)) is None  # recorded already
    assert schedule.due(at(10, 5), at(10, 6, 1)) == (at(10, 6), True)


def hourly(missed: str) -> Periodic:
    return Periodic("h", "0 * * * *", lambda tick: Reminded(n=tick.hour), "UTC", missed)


def test_missed_ticks_get_one_catch_up_run_or_none():
    down_since = at(10, 0)
    back = at(13, 7)  # three ticks missed, the last 7 minutes ago
    assert hourly("once").due(down_since, back) == (at(13, 0), True)
    assert hourly("skip").due(down_since, back) == (at(13, 0), False)
    assert hourly("skip").due(at(13, 0), at(13, 30)) is None  # the skipped one is recorded
    # A tick only a little late is on time whatever the rule.
    assert hourly("skip").due(down_since, at(13, 0, LATE)) == (at(13, 0), True)
    # A schedule ticking more often than that is always back on time with its latest tick.
    assert every_minute("skip").due(down_since, at(13, 7, 30)) == (at(13, 7), True)


def test_a_schedule_never_ticked_starts_with_a_tick_on_time():
    assert hourly("once").due(None, at(10, 5)) is None  # 10:00 came before it was there
    assert hourly("once").due(None, at(11, 0, 1)) == (at(11, 0), True)


def test_ticks_follow_the_time_zone_across_a_change_of_clocks():
    daily = Periodic("d", "30 9 * * *", lambda tick: Reminded(n=0), "Europe/Paris")
    # 29 March 2026: Paris moves from UTC+1 to UTC+2; 09:30 in Paris stays 09:30.
    first = daily.following(dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    second = daily.following(first)
    assert first.astimezone(UTC) == dt.datetime(2026, 3, 29, 7, 30, tzinfo=UTC)
    assert second.astimezone(UTC) == dt.datetime(2026, 3, 30, 7, 30, tzinfo=UTC)
    assert daily.latest(dt.datetime(2026, 3, 28, 9, 0, tzinfo=UTC)) == dt.datetime(
        2026, 3, 28, 9, 30, tzinfo=PARIS
    )  # 08:30 UTC, before the change


def test_a_schedule_declared_wrongly_is_refused_with_the_reason():
    ok = {"cron": "*/5 * * * *", "message": "tests.busapp.events.Reminded", "kwargs": {"n": 1}}
    assert of_setting("ok", ok).message(at(10, 5)) == Reminded(n=1)
    for spec, reason in [
        ({**ok, "cron": "every day"}, "bad cron expression"),
        ({**ok, "timezone": "Mars/Olympus"}, "no time zone"),
        ({**ok, "missed": "twice"}, "missed must be"),
        ({**ok, "message": "tests.busapp.events.Nothing"}, "cannot import"),
        ({**ok, "message": "datetime.datetime"}, "not a command or event class"),
        ({**ok, "kwargs": {"m": 1}}, r"Reminded\(\*\*kwargs\) fails"),
        ({**ok, "every": "day"}, "unknown key 'every'"),
        ({"cron": "* * * * *"}, "'cron' and 'message'"),
        ("* * * * *", "must be a dict"),
    ]:
        with pytest.raises(ScheduleError, match=reason):
            of_setting("bad", spec)


def test_manage_py_check_reports_a_bad_schedule_as_e008(settings):
    reminded = {"message": "tests.busapp.events.Reminded", "kwargs": {"n": 1}}
    bad = {"nightly": {"cron": "61 * * * *", **reminded}}
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "SCHEDULES": bad}):
        with pytest.raises(SystemCheckError, match=r"messagebus\.E008.*nightly: bad cron"):
            call_command("check")
        assert schedules.all() == []  # a worker leaves it out, and runs the others
    with (
        override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "SCHEDULES": []}),
        pytest.raises(SystemCheckError, match=r"messagebus\.E003.*SCHEDULES"),
    ):
        call_command("check")


def test_a_periodic_command_without_a_handler_is_reported(messagebus_registry):
    class Unhandled(messagebus.Command):
        pass

    with schedules.temporary():
        messagebus.periodic("0 * * * *", name="hourly")(lambda tick: Unhandled())
        with pytest.raises(SystemCheckError, match=r"messagebus\.E008.*hourly sends the command"):
            call_command("check")


def test_the_decorator_registers_a_schedule_once_by_name():
    with schedules.temporary():

        @messagebus.periodic("*/10 * * * *", timezone="Europe/Paris", missed="skip")
        def remind(tick: dt.datetime) -> Reminded:
            return Reminded(n=tick.minute)

        (found,) = schedules.all()
        assert (found.name, found.timezone, found.missed) == (
            f"{__name__}.{remind.__qualname__}", "Europe/Paris", "skip"
        )  # fmt: skip
        assert found.message(at(10, 20)) == Reminded(n=20)
        with pytest.raises(ScheduleError, match="exists already"):
            messagebus.periodic("* * * * *", name=found.name)(remind)
    assert schedules.all() == []

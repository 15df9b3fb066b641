import datetime as dt


class Clock:
    """A dependency configured in MESSAGEBUS["DEPENDENCIES"]."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

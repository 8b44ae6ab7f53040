"""Campaign days: a post that goes out "every 8 March at 09:00" in each target's own time zone.

A campaign file (`config/campaigns/<id>.yaml`) names a month, a day and a local wall time. For a
post, the wall time is read in each target's zone, so 09:00 in Brussels, Santiago and Manila are
three different instants. Everything here is a pure function of its arguments: callers pass the
clock (`after`, `now`) in, nothing reads the current time.

Rules a reader should know:

* 29 February: in a year without one the campaign falls on 28 February.
* A wall time that does not exist (the spring-forward gap) moves forward by the length of the gap
  (02:30 on the European spring-forward day becomes 03:30 summer time); a wall time that happens
  twice (fall back) means the first of the two instants (fold=0).
* All targets of one post get the same campaign year where possible (see `plan_campaign`).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from crosspost.errors import ConfigError, InputError

_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_SHORT_DURATION_RE = re.compile(r"^(\d+)([smh])$")
# Years and months are not fixed lengths, so an ISO 8601 stagger may only use weeks..seconds.
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_SHORT_UNITS = {"s": "seconds", "m": "minutes", "h": "hours"}
_YEAR_PLACEHOLDER_RE = re.compile(r"\{\{year\}\}|\{year\}")
# 2000 is a leap year: a day is valid for a month if it exists in some year.
_LEAP_YEAR = 2000


def _wall_time(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 10:00 as the base-60 number 600.
        raise ValueError(f'{value} is a number: write the time in quotes, e.g. time: "10:00"')
    match = _TIME_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a time HH:MM (24-hour, e.g. 09:00)")
    return time(int(match[1]), int(match[2]))


def _stagger(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if value == 0 and not isinstance(value, bool):
        return timedelta(0)
    hint = "write it as 5m, 2h or 30s, or as an ISO 8601 duration such as PT5M"
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration: {hint}")
    short = _SHORT_DURATION_RE.match(value)
    if short:
        return timedelta(**{_SHORT_UNITS[short[2]]: int(short[1])})
    iso = _ISO_DURATION_RE.match(value)
    if iso and value not in ("P", "PT") and not value.endswith("T"):
        parts = {unit: float(amount) for unit, amount in iso.groupdict().items() if amount}
        return timedelta(**parts)
    raise ValueError(f"{value!r} is not a duration: {hint}")


WallTime = Annotated[time, BeforeValidator(_wall_time)]
Stagger = Annotated[timedelta, BeforeValidator(_stagger)]


class Campaign(BaseModel):
    """A recurring day: `month`/`day` at the local wall `time` of each target's zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = Field(min_length=1)
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    time: WallTime
    stagger: Stagger = timedelta(0)
    recurring: bool = True

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _SLUG_RE.match(value):
            raise ValueError(
                f"{value!r} is not a slug: use lowercase letters, digits and single hyphens"
            )
        return value

    @field_validator("day")
    @classmethod
    def _day_in_month(cls, value: int, info: ValidationInfo) -> int:
        month = info.data.get("month")
        if month is not None:
            last = calendar.monthrange(_LEAP_YEAR, month)[1]
            if value > last:
                raise ValueError(f"{calendar.month_name[month]} has no day {value}")
        return value

    @field_validator("stagger")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    def occurrence(self, zone: ZoneInfo, year: int) -> datetime:
        """The campaign's instant in `year` at `zone`'s wall clock, as aware UTC.

        29 February falls on 28 February in a year without one. A wall time inside a
        spring-forward gap moves forward by the gap (02:30 → 03:30 when clocks jump an hour); a
        wall time that occurs twice at fall-back is the first instant (fold=0). Python's
        zoneinfo resolves fold=0 exactly so (PEP 495: in a gap, fold=0 applies the offset from
        before the transition), which the tests pin down with hand-computed instants.
        """
        day = min(self.day, calendar.monthrange(year, self.month)[1])
        wall = datetime.combine(date(year, self.month, day), self.time)
        return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)

    def next_occurrence(self, zone: ZoneInfo, after: datetime) -> datetime:
        """The first occurrence in `zone` strictly after the aware instant `after`, as UTC.

        `after` exactly at an occurrence gives next year's. DST: a wall time that does not exist
        (spring-forward gap) moves forward by the gap, e.g. 02:30 → 03:30; a wall time that
        happens twice (fall back) is the first instant (fold=0). 29 February is 28 February in
        other years.
        """
        return self._next(zone, after)[1]

    def _next(self, zone: ZoneInfo, after: datetime) -> tuple[int, datetime]:
        _require_aware(after)
        # A year before the local one too: a gap shift can push 31 Dec into the next year.
        year = after.astimezone(zone).year - 1
        while True:
            instant = self.occurrence(zone, year)
            if instant > after:
                return year, instant
            year += 1

    def rule_text(self) -> str:
        """E.g. `8 March at 09:00 local time, every year`."""
        when = f"{self.day} {calendar.month_name[self.month]} at {self.time:%H:%M} local time"
        return f"{when}, every year" if self.recurring else f"{when}, once"


@dataclass(frozen=True)
class CampaignSlot:
    """When one target of a post goes out for a campaign, and which campaign year that is."""

    target: str
    zone: ZoneInfo
    year: int
    at: datetime  # aware UTC, stagger included


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone: pass an aware datetime")


def plan_campaign(
    campaign: Campaign, targets: Sequence[tuple[str, ZoneInfo]], after: datetime
) -> tuple[CampaignSlot, ...]:
    """Each target's next occurrence, in the order the post lists its targets.

    One post goes out for one campaign year: the year of the first target's next occurrence
    after `after`. Every target takes that year's occurrence in its own zone. If that instant is
    already ≤ `after` in some target's zone (Manila is past 09:00 on 8 March while Santiago is
    not), that target goes to the following year instead: we never publish in the past, and a
    later target is never pulled into an earlier year than the first one. The n-th target (from
    0) then waits `stagger × n` after its own occurrence.
    """
    if not targets:
        return ()
    first_zone = targets[0][1]
    year = campaign._next(first_zone, after)[0]
    slots = []
    for index, (name, zone) in enumerate(targets):
        target_year, instant = year, campaign.occurrence(zone, year)
        if instant <= after:
            target_year, instant = campaign._next(zone, after)
        slots.append(CampaignSlot(name, zone, target_year, instant + campaign.stagger * index))
    return tuple(slots)


def schedule_campaign(
    campaign: Campaign, targets: Sequence[tuple[str, ZoneInfo]], after: datetime
) -> dict[str, datetime]:
    """Per target name, the UTC instant it goes out (see `plan_campaign` for the rules)."""
    return {slot.target: slot.at for slot in plan_campaign(campaign, targets, after)}


def plan_following(
    campaign: Campaign,
    targets: Sequence[tuple[str, ZoneInfo]],
    previous: Mapping[str, datetime],
) -> tuple[CampaignSlot, ...]:
    """The next year's slots for the targets in `previous`, once those have gone out.

    `previous` maps a target to the instant it was *scheduled* for (stagger included, not the
    time a late retry published it). Each target moves to its own next occurrence after that
    one, keeping its stagger; targets missing from `previous` are left out. A one-off campaign
    (`recurring: false`) has nothing following: the result is empty.
    """
    if not campaign.recurring:
        return ()
    slots = []
    for index, (name, zone) in enumerate(targets):
        if name not in previous:
            continue
        offset = campaign.stagger * index
        year, instant = campaign._next(zone, previous[name] - offset)
        slots.append(CampaignSlot(name, zone, year, instant + offset))
    return tuple(slots)


def following_occurrences(
    campaign: Campaign,
    targets: Sequence[tuple[str, ZoneInfo]],
    previous: Mapping[str, datetime],
) -> dict[str, datetime]:
    """Per target name, the UTC instant of the next year's publish (see `plan_following`)."""
    return {slot.target: slot.at for slot in plan_following(campaign, targets, previous)}


def fill_year(text: str, year: int) -> str:
    """Replace `{year}` with `year`; `{{year}}` gives a literal `{year}`; other braces stay."""
    return _YEAR_PLACEHOLDER_RE.sub(
        lambda match: "{year}" if match[0] == "{{year}}" else str(year), text
    )


def find_campaign(campaigns: Mapping[str, Campaign], name: str, source: str) -> Campaign:
    """The campaign a post names, or an InputError listing the known ones."""
    if name in campaigns:
        return campaigns[name]
    known = ", ".join(sorted(campaigns)) or "none"
    raise InputError.one(source, "campaign", f"unknown campaign {name!r}; known: {known}")


@dataclass(frozen=True)
class CampaignInstant:
    target: str
    zone: str
    year: int
    utc: str  # ISO 8601
    local: str  # ISO 8601 with the zone's offset

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "zone": self.zone,
            "year": self.year,
            "utc": self.utc,
            "local": self.local,
        }


@dataclass(frozen=True)
class CampaignRow:
    id: str
    name: str
    rule: str
    recurring: bool
    stagger_seconds: float
    next: tuple[CampaignInstant, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "rule": self.rule,
            "recurring": self.recurring,
            "stagger_seconds": self.stagger_seconds,
            "next": [instant.as_json() for instant in self.next],
        }


def campaign_table(
    campaigns: Mapping[str, Campaign],
    targets: Sequence[tuple[str, ZoneInfo]],
    now: datetime,
) -> list[CampaignRow]:
    """Every campaign with its next instant per target, soonest campaign first.

    The instants follow `plan_campaign` without the stagger: the stagger depends on the order a
    post lists its targets, so the table shows it separately.
    """
    rows = []
    for campaign in campaigns.values():
        unstaggered = campaign.model_copy(update={"stagger": timedelta(0)})
        instants = tuple(
            CampaignInstant(
                target=slot.target,
                zone=slot.zone.key,
                year=slot.year,
                utc=slot.at.isoformat(),
                local=slot.at.astimezone(slot.zone).isoformat(),
            )
            for slot in plan_campaign(unstaggered, targets, now)
        )
        rows.append(
            CampaignRow(
                id=campaign.id,
                name=campaign.name,
                rule=campaign.rule_text(),
                recurring=campaign.recurring,
                stagger_seconds=campaign.stagger.total_seconds(),
                next=instants,
            )
        )
    # ISO strings in UTC sort as instants; a campaign with no targets sorts last.
    return sorted(rows, key=lambda row: (min((i.utc for i in row.next), default="~"), row.id))


def _problem(source: Path, err: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in err["loc"]) or "(file)"
    if err["type"] == "extra_forbidden":
        known = ", ".join(Campaign.model_fields)
        return f"{source}: {field}: unknown field (the fields are: {known})"
    if err["type"] == "missing":
        return f"{source}: {field}: is required"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{source}: {field}: {message}"


def load_campaign(path: Path) -> Campaign:
    """One campaign file; its `id` must equal the file name without `.yaml`."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the campaign file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (file): expected a mapping of id, name, month, day, time")
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_problem(path, err) for err in exc.errors())) from None
    if campaign.id != path.stem:
        raise ConfigError(f"{path}: id: {campaign.id!r} must equal the file name {path.stem!r}")
    return campaign


def load_campaigns(directory: Path) -> dict[str, Campaign]:
    """Every `*.yaml` / `*.yml` campaign in `directory`, by id, in file-name order.

    A missing directory means no campaigns. Problems in all files are reported together.
    """
    if not directory.exists():
        return {}
    if not directory.is_dir():
        raise ConfigError(f"{directory}: the campaigns path is not a directory")
    paths = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    campaigns: dict[str, Campaign] = {}
    problems: list[str] = []
    for path in paths:
        try:
            campaign = load_campaign(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if campaign.id in campaigns:
            problems.append(f"{path}: id: {campaign.id!r} is defined by another file too")
            continue
        campaigns[campaign.id] = campaign
    if problems:
        raise ConfigError("\n".join(problems))
    return campaigns

"""Campaign days evaluated in each target's own zone, with hand-computed instants.

Expected UTC instants are written out from the published rules, not computed with zoneinfo:
Brussels is UTC+1 in winter and UTC+2 from the last Sunday of March (01:00Z) to the last Sunday of
October (01:00Z); Manila is UTC+8 all year; continental Chile is UTC-3 in summer and UTC-4 in
winter, summer time ending at 24:00 local on the first Saturday of April (clocks go back to 23:00)
and starting at 24:00 local on the first Saturday of September (clocks jump to 01:00 on Sunday).
In 2027 those Saturdays are 3 April and 4 September.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosspost.campaigns import (
    Campaign,
    campaign_table,
    fill_year,
    find_campaign,
    following_occurrences,
    load_campaign,
    load_campaigns,
    plan_campaign,
    schedule_campaign,
)
from crosspost.errors import ConfigError, InputError

CAMPAIGNS_DIR = Path(__file__).resolve().parent.parent / "config" / "campaigns"
BRUSSELS = ZoneInfo("Europe/Brussels")
SANTIAGO = ZoneInfo("America/Santiago")
MANILA = ZoneInfo("Asia/Manila")
TARGETS = [("facebook-page", BRUSSELS), ("mastodon-es", SANTIAGO), ("mastodon-ph", MANILA)]
NEW_YEAR_2027 = datetime(2027, 1, 1, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def campaign(**fields: Any) -> Campaign:
    base: dict[str, Any] = {"id": "test-day", "name": "Test day", "month": 3, "day": 8}
    return Campaign.model_validate({"time": "09:00", **base, **fields})


WOMENS_DAY = campaign(id="international-womens-day")


def test_nine_oclock_is_a_different_instant_in_each_zone() -> None:
    assert schedule_campaign(WOMENS_DAY, TARGETS, NEW_YEAR_2027) == {
        "facebook-page": utc(2027, 3, 8, 8),  # 09:00 +01:00
        "mastodon-es": utc(2027, 3, 8, 12),  # 09:00 -03:00, Chilean summer time
        "mastodon-ph": utc(2027, 3, 8, 1),  # 09:00 +08:00
    }


def test_manila_goes_first_and_santiago_last() -> None:
    planned = schedule_campaign(WOMENS_DAY, TARGETS, NEW_YEAR_2027)
    assert sorted(planned, key=planned.__getitem__) == [
        "mastodon-ph",
        "facebook-page",
        "mastodon-es",
    ]


def test_after_exactly_at_the_occurrence_means_next_year() -> None:
    assert WOMENS_DAY.next_occurrence(BRUSSELS, utc(2027, 3, 8, 8)) == utc(2028, 3, 8, 8)
    assert WOMENS_DAY.next_occurrence(BRUSSELS, utc(2027, 3, 8, 7, 59)) == utc(2027, 3, 8, 8)


def test_after_in_another_zone_is_compared_as_an_instant() -> None:
    after = datetime(2027, 3, 8, 9, 0, tzinfo=BRUSSELS)  # 08:00Z: Manila is past, Santiago not
    assert WOMENS_DAY.next_occurrence(MANILA, after) == utc(2028, 3, 8, 1)
    assert WOMENS_DAY.next_occurrence(SANTIAGO, after) == utc(2027, 3, 8, 12)


def test_a_post_keeps_one_campaign_year_where_it_can() -> None:
    # 03:00Z on 8 March 2026: Manila's 2026 occurrence (01:00Z) is gone, Santiago's (12:00Z) is
    # not. The first target is Manila, so the post is for 2027 in every zone.
    planned = plan_campaign(WOMENS_DAY, [TARGETS[2], TARGETS[1]], utc(2026, 3, 8, 3))
    assert [(slot.target, slot.year, slot.at) for slot in planned] == [
        ("mastodon-ph", 2027, utc(2027, 3, 8, 1)),
        ("mastodon-es", 2027, utc(2027, 3, 8, 12)),
    ]


def test_a_target_already_past_in_the_first_targets_year_goes_to_the_next_year() -> None:
    # Santiago first: its next occurrence is 2026, but Manila's 2026 one is already past.
    planned = plan_campaign(WOMENS_DAY, [TARGETS[1], TARGETS[2]], utc(2026, 3, 8, 3))
    assert [(slot.target, slot.year, slot.at) for slot in planned] == [
        ("mastodon-es", 2026, utc(2026, 3, 8, 12)),
        ("mastodon-ph", 2027, utc(2027, 3, 8, 1)),
    ]


def test_stagger_follows_the_order_the_post_lists_its_targets() -> None:
    staggered = campaign(stagger="5m")
    same_zone = [("a", BRUSSELS), ("b", BRUSSELS), ("c", BRUSSELS)]
    assert schedule_campaign(staggered, same_zone, NEW_YEAR_2027) == {
        "a": utc(2027, 3, 8, 8, 0),
        "b": utc(2027, 3, 8, 8, 5),
        "c": utc(2027, 3, 8, 8, 10),
    }
    mixed = schedule_campaign(staggered, TARGETS, NEW_YEAR_2027)
    assert mixed["mastodon-es"] == utc(2027, 3, 8, 12, 5)
    assert mixed["mastodon-ph"] == utc(2027, 3, 8, 1, 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5m", timedelta(minutes=5)), ("2h", timedelta(hours=2)), ("30s", timedelta(seconds=30)),
     ("0m", timedelta(0)), ("PT5M", timedelta(minutes=5)), ("PT1H30M", timedelta(minutes=90)),
     ("P1D", timedelta(days=1)), ("PT0.5S", timedelta(seconds=0.5))],
)  # fmt: skip
def test_stagger_forms(text: str, expected: timedelta) -> None:
    assert campaign(stagger=text).stagger == expected


def test_following_occurrence_is_next_year_with_the_same_stagger() -> None:
    staggered = campaign(stagger="5m")
    first = schedule_campaign(staggered, TARGETS, NEW_YEAR_2027)
    assert following_occurrences(staggered, TARGETS, first) == {
        "facebook-page": utc(2028, 3, 8, 8, 0),
        "mastodon-es": utc(2028, 3, 8, 12, 5),
        "mastodon-ph": utc(2028, 3, 8, 1, 10),
    }
    only_one = {"mastodon-es": first["mastodon-es"]}
    assert following_occurrences(staggered, TARGETS, only_one) == {
        "mastodon-es": utc(2028, 3, 8, 12, 5)
    }


def test_a_one_off_campaign_has_no_following_occurrence() -> None:
    once = campaign(recurring=False)
    first = schedule_campaign(once, TARGETS, NEW_YEAR_2027)
    assert following_occurrences(once, TARGETS, first) == {}


def test_spring_forward_gap_moves_forward_by_the_gap() -> None:
    # 28 March 2027: Brussels jumps 02:00 -> 03:00, so 02:30 does not exist; 03:30 CEST = 01:30Z.
    gap = campaign(month=3, day=28, time="02:30")
    instant = gap.next_occurrence(BRUSSELS, NEW_YEAR_2027)
    assert instant == utc(2027, 3, 28, 1, 30)
    assert instant.astimezone(BRUSSELS).strftime("%H:%M %z") == "03:30 +0200"


def test_fall_back_ambiguity_takes_the_first_instant() -> None:
    # 31 October 2027: Brussels goes 03:00 CEST -> 02:00 CET; 02:30 happens at 00:30Z and 01:30Z.
    ambiguous = campaign(month=10, day=31, time="02:30")
    instant = ambiguous.next_occurrence(BRUSSELS, NEW_YEAR_2027)
    assert instant == utc(2027, 10, 31, 0, 30)
    assert instant.astimezone(BRUSSELS).strftime("%H:%M %z") == "02:30 +0200"


@pytest.mark.parametrize(
    ("month", "day", "wall", "expected"),
    [
        # Summer time ends: Saturday 3 April 24:00 -03 (= 03:00Z) becomes 23:00 -04.
        (4, 3, "22:30", utc(2027, 4, 4, 1, 30)),  # -03, before the change
        (4, 3, "23:30", utc(2027, 4, 4, 2, 30)),  # happens twice: the first, at -03
        (4, 4, "00:00", utc(2027, 4, 4, 4, 0)),  # once only, at -04
        (4, 4, "00:30", utc(2027, 4, 4, 4, 30)),
        # Summer time starts: Saturday 4 September 24:00 -04 (= 04:00Z) becomes 01:00 -03.
        (9, 4, "23:30", utc(2027, 9, 5, 3, 30)),  # -04, before the change
        (9, 5, "00:00", utc(2027, 9, 5, 4, 0)),  # does not exist: 01:00 -03
        (9, 5, "00:30", utc(2027, 9, 5, 4, 30)),  # does not exist: 01:30 -03
        (9, 5, "01:00", utc(2027, 9, 5, 4, 0)),  # the first wall time after the jump
    ],
)
def test_chilean_summer_time_changes(month: int, day: int, wall: str, expected: datetime) -> None:
    chile_day = campaign(month=month, day=day, time=wall)
    assert chile_day.next_occurrence(SANTIAGO, NEW_YEAR_2027) == expected


def test_29_february_falls_on_28_february_in_other_years() -> None:
    leap_day = campaign(month=2, day=29, time="12:00")
    assert leap_day.next_occurrence(MANILA, NEW_YEAR_2027) == utc(2027, 2, 28, 4)
    assert leap_day.next_occurrence(MANILA, utc(2027, 3, 1)) == utc(2028, 2, 29, 4)
    assert leap_day.next_occurrence(MANILA, utc(2028, 2, 29, 4)) == utc(2029, 2, 28, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Happy {year}!", "Happy 2027!"),
        ("{year} and {year}", "2027 and 2027"),
        ("write {{year}} to get the year", "write {year} to get the year"),
        ("{name} {} {0} {years} {{other}}", "{name} {} {0} {years} {{other}}"),
        ("no placeholder", "no placeholder"),
    ],
)
def test_fill_year(text: str, expected: str) -> None:
    assert fill_year(text, 2027) == expected


def test_year_is_the_campaign_year_in_each_zone() -> None:
    new_year = campaign(month=1, day=1, time="00:30")
    # 17:00Z on 31 Dec 2026 is 01:00 on 1 January 2027 in Manila, 14:00 on 31 Dec in Santiago.
    planned = plan_campaign(new_year, [TARGETS[1], TARGETS[2]], utc(2026, 12, 31, 17))
    assert [(slot.target, slot.year) for slot in planned] == [
        ("mastodon-es", 2027),
        ("mastodon-ph", 2028),
    ]
    assert fill_year("Happy {year}", planned[0].year) == "Happy 2027"


def test_every_shipped_campaign_loads() -> None:
    campaigns = load_campaigns(CAMPAIGNS_DIR)
    assert list(campaigns) == sorted(campaigns)
    days = {c.id: (c.month, c.day, f"{c.time:%H:%M}") for c in campaigns.values()}
    assert days == {
        "international-womens-day": (3, 8, "09:00"),
        "international-day-of-peace": (9, 21, "10:00"),
        "human-rights-day": (12, 10, "10:00"),
        "international-workers-day": (5, 1, "09:00"),
        "world-refugee-day": (6, 20, "09:00"),
        "international-day-for-the-elimination-of-violence-against-women": (11, 25, "09:00"),
    }
    assert all(c.recurring and c.stagger == timedelta(0) for c in campaigns.values())


def test_campaign_table_shows_utc_and_local_per_target() -> None:
    campaigns = load_campaigns(CAMPAIGNS_DIR)
    rows = campaign_table(campaigns, TARGETS, utc(2027, 3, 9))
    assert rows[0].id == "international-workers-day"  # soonest after 9 March
    assert rows[-1].id == "international-womens-day"  # next one is in 2028
    womens = rows[-1].as_json()
    assert womens["next"] == [
        {"target": "facebook-page", "zone": "Europe/Brussels", "year": 2028,
         "utc": "2028-03-08T08:00:00+00:00", "local": "2028-03-08T09:00:00+01:00"},
        {"target": "mastodon-es", "zone": "America/Santiago", "year": 2028,
         "utc": "2028-03-08T12:00:00+00:00", "local": "2028-03-08T09:00:00-03:00"},
        {"target": "mastodon-ph", "zone": "Asia/Manila", "year": 2028,
         "utc": "2028-03-08T01:00:00+00:00", "local": "2028-03-08T09:00:00+08:00"},
    ]  # fmt: skip
    assert womens["rule"] == "8 March at 09:00 local time, every year"


def test_unknown_campaign_names_the_known_ones() -> None:
    campaigns = load_campaigns(CAMPAIGNS_DIR)
    with pytest.raises(InputError) as caught:
        find_campaign(campaigns, "womens-day", "posts/iwd.yaml")
    (problem,) = caught.value.problems
    assert (problem.source, problem.field) == ("posts/iwd.yaml", "campaign")
    assert "unknown campaign 'womens-day'; known: human-rights-day," in problem.message
    assert find_campaign(campaigns, "human-rights-day", "x").day == 10


GOOD_FILE = 'id: {stem}\nname: A day\nmonth: 3\nday: 8\ntime: "09:00"\n'


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (GOOD_FILE.replace("month: 3", "month: 13"), "month", "less than or equal to 12"),
        (GOOD_FILE.replace("day: 8", "day: 32"), "day", "less than or equal to 31"),
        (GOOD_FILE.replace("month: 3", "month: 4").replace("day: 8", "day: 31"), "day",
         "April has no day 31"),
        (GOOD_FILE.replace('"09:00"', '"9am"'), "time", "not a time HH:MM"),
        (GOOD_FILE.replace('"09:00"', '"24:00"'), "time", "not a time HH:MM"),
        (GOOD_FILE.replace('"09:00"', "10:00"), "time", 'write the time in quotes'),
        (GOOD_FILE.replace("{stem}", "another-day"), "id", "must equal the file name"),
        (GOOD_FILE.replace("{stem}", "Bad_Id"), "id", "not a slug"),
        (GOOD_FILE + "colour: red\n", "colour", "unknown field"),
        (GOOD_FILE + "stagger: 5 minutes\n", "stagger", "not a duration"),
        (GOOD_FILE + "stagger: P1M\n", "stagger", "not a duration"),
        (GOOD_FILE.replace("name: A day\n", ""), "name", "is required"),
    ],
)  # fmt: skip
def test_bad_campaign_file_names_file_and_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = tmp_path / "a-day.yaml"
    path.write_text(text.replace("{stem}", "a-day"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_campaigns(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}: ")
    assert problem in message


def test_problems_in_several_files_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(GOOD_FILE.format(stem="one").replace("3", "0"))
    (tmp_path / "two.yml").write_text("- not a mapping\n")
    (tmp_path / "fine.yaml").write_text(GOOD_FILE.format(stem="fine"))
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(ConfigError) as caught:
        load_campaigns(tmp_path)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(tmp_path / "one.yaml"),
        str(tmp_path / "two.yml"),
    ]


def test_single_good_file_and_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "a-day.yaml"
    path.write_text(GOOD_FILE.format(stem="a-day"))
    assert load_campaign(path).name == "A day"
    assert load_campaigns(tmp_path / "absent") == {}


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        WOMENS_DAY.next_occurrence(BRUSSELS, datetime(2027, 1, 1))  # noqa: DTZ001


PROPERTY_ZONES = [
    "Europe/Brussels",
    "America/Santiago",
    "Asia/Manila",
    "America/New_York",
    "Australia/Lord_Howe",  # half-hour summer time
    "Pacific/Chatham",
    "America/St_Johns",
    "Asia/Kolkata",
    "Pacific/Apia",  # skipped 30 December 2011 entirely
    "Africa/Casablanca",  # clocks go back during Ramadan
    "UTC",
]


# Wall times inside a gap or a fold, by zone, year, month, day and hours; random draws rarely land
# on them, so the property draws from these half of the time.
EDGES = [
    ("Europe/Brussels", 2027, 3, 28, [2]),
    ("Europe/Brussels", 2027, 10, 31, [2]),
    ("America/Santiago", 2027, 9, 5, [0]),
    ("America/Santiago", 2027, 4, 3, [23]),
    ("America/New_York", 2027, 3, 14, [2]),
    ("America/New_York", 2027, 11, 7, [1]),
    ("Australia/Lord_Howe", 2027, 10, 3, [2]),
    ("Australia/Lord_Howe", 2027, 4, 4, [1]),
    ("Pacific/Chatham", 2027, 9, 26, [2, 3]),
    ("Pacific/Chatham", 2027, 4, 4, [2, 3]),
    ("America/St_Johns", 2027, 3, 14, [2]),
    ("America/St_Johns", 2027, 11, 7, [1]),
    ("Pacific/Apia", 2011, 12, 30, list(range(24))),
]
Case = tuple[str, int, int, int, int, datetime]


@st.composite
def edge_cases(draw: st.DrawFn) -> Case:
    zone_name, year, month, day, hours = draw(st.sampled_from(EDGES))
    after = draw(
        st.datetimes(
            min_value=datetime(year, 1, 1),  # noqa: DTZ001
            max_value=datetime(year, 3, 1),  # noqa: DTZ001
            timezones=st.just(UTC),
        )
    )
    return zone_name, month, day, draw(st.sampled_from(hours)), draw(st.integers(0, 59)), after


any_cases = st.tuples(
    st.sampled_from(PROPERTY_ZONES),
    st.integers(1, 12),
    st.integers(1, 31),
    st.integers(0, 23),
    st.integers(0, 59),
    st.datetimes(
        min_value=datetime(1971, 1, 1),  # noqa: DTZ001
        max_value=datetime(2090, 12, 31),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)


@settings(max_examples=300, deadline=None)
@given(case=st.one_of(any_cases, edge_cases()))
def test_next_occurrence_is_the_campaign_wall_time_after_the_given_instant(case: Case) -> None:
    zone_name, month, day, hour, minute, after = case
    day = min(day, calendar.monthrange(2000, month)[1])
    rule = campaign(month=month, day=day, time=f"{hour:02d}:{minute:02d}")
    zone = ZoneInfo(zone_name)
    instant = rule.next_occurrence(zone, after)
    assert instant > after
    assert instant.tzinfo is UTC

    # The campaign year is the local year, except when a gap pushed 31 December into January.
    year = next(y for y in (instant.astimezone(zone).year, instant.year - 1)
                if rule.occurrence(zone, y) == instant)  # fmt: skip
    assert rule.occurrence(zone, year - 1) <= after  # nothing earlier was skipped
    wall = datetime(year, month, min(day, calendar.monthrange(year, month)[1]), hour, minute)  # noqa: DTZ001
    local = instant.astimezone(zone).replace(tzinfo=None)
    if local != wall:
        # Only a spring-forward gap may move it, forward and by exactly the gap: the wall time
        # read with the offset in force just before the gap is the instant.
        shift = local - wall
        assert shift > timedelta(0)
        before = (instant - shift).astimezone(zone).utcoffset()
        after_gap = instant.astimezone(zone).utcoffset()
        assert before is not None
        assert after_gap is not None
        assert after_gap - before == shift
        assert wall - before == instant.replace(tzinfo=None)
    else:
        # Of the instants showing this wall time, it is the first.
        assert not any(
            (instant - step).astimezone(zone).replace(tzinfo=None) == wall
            for step in (timedelta(minutes=30), timedelta(hours=1), timedelta(hours=2))
        )

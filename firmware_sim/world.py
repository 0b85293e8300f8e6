"""The simulated world: care-home residents, households, scenarios, and one time-ordered event stream.

``build_world`` draws a population (deterministic for the seed; every resident and household has its own
generators keyed by ``[seed, tag, ...index]``, so adding residents never changes existing ones) and attaches
the scenarios. ``World.events(start, end)`` streams every value-level event in time order, lazily: each site
and household produces one simulated day at a time and ``heapq.merge`` interleaves them. The ground truth
(what each scenario should make the platform raise, and by when) comes from ``World.ground_truth()``.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from carewatch.firmware_sim.care import HomeCare
from carewatch.firmware_sim.household import (
    SENSORS,
    TAG_PROFILE,
    DeadSpell,
    HomeProfile,
    HouseholdModel,
    HouseholdOptions,
    PersonProfile,
    SensorEvent,
    Weather,
)
from carewatch.firmware_sim.illness import course_marks
from carewatch.firmware_sim.physiology import (
    KIT_DEVICE_KINDS,
    Baseline,
    Condition,
    KitCharacter,
    ManualObservation,
    ObservationRoutine,
    VitalSample,
    draw_baseline,
    draw_conditions,
    resident_day,
)
from carewatch.firmware_sim.scenarios import (
    DeviceFault,
    DeviceRef,
    Effect,
    FaultKind,
    GatewayOutage,
    GroundTruthRow,
    Scenario,
    ScenarioError,
    ScenarioKind,
    WallClock,
)
from carewatch.wire import DeviceKind

Event = VitalSample | ManualObservation | SensorEvent | DeviceFault | GatewayOutage

TAG_RESIDENT, TAG_RESIDENT_DAY, TAG_KIT, TAG_SITE, TAG_HOUSEHOLD, TAG_CARE = 11, 12, 13, 14, 15, 16
MAX_RESIDENTS_PER_SITE = 1000
#: Care homes one world can hold: NHS test numbers are unique per (site position, resident index) below 900,000.
MAX_SITES = 900


# ------------------------------------------------------------------------------------------------------------
# Fake but plausible identities
# ------------------------------------------------------------------------------------------------------------
FEMALE_NAMES = (
    "Margaret", "Dorothy", "Joan", "Jean", "Betty", "Doris", "Eileen", "Patricia", "Mary", "Joyce", "Irene",
    "Barbara", "Sheila", "Elsie", "Edna", "Kathleen", "Audrey", "Brenda", "Maureen", "Sylvia", "Pauline",
    "Valerie", "Shirley", "June", "Iris", "Winifred", "Gladys", "Vera", "Marjorie", "Beryl", "Rita", "Enid",
)
MALE_NAMES = (
    "John", "William", "George", "Kenneth", "Ronald", "Peter", "Dennis", "Arthur", "Albert", "Frank",
    "Harold", "Alan", "Brian", "Derek", "Roy", "Raymond", "Leonard", "Stanley", "Eric", "Norman", "Donald",
    "Gordon", "Geoffrey", "Terence", "Michael", "David", "Bernard", "Cyril",
)
SURNAMES = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson",
    "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green", "Hall",
    "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin", "Cooper", "Hill", "Ward",
    "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison", "Morgan", "Allen", "James", "Scott",
    "Phillips", "Watson", "Davis", "Parker", "Price", "Bennett", "Young", "Griffiths", "Mitchell", "Kelly",
    "Cook", "Carter", "Richardson", "Bailey", "Collins", "Bell", "Shaw", "Murphy", "Miller", "Cox",
    "Richards", "Khan", "Marshall", "Anderson", "Simpson", "Ellis", "Adams", "Singh", "Begum", "Wilkinson",
    "Foster", "Chapman", "Powell", "Webb", "Rogers", "Gray", "Mason", "Ali", "Hunt", "Hussain", "Campbell",
    "Matthews", "Owen", "Palmer", "Holmes", "Mills", "Barnes", "Knight", "Lloyd", "Butler", "Russell",
)
COUNCILS = (
    "Leeds City Council", "Norfolk County Council", "Bristol City Council", "Cornwall Council",
    "Manchester City Council", "Kent County Council", "Birmingham City Council", "Cumberland Council",
    "Devon County Council", "Sheffield City Council", "Lancashire County Council", "Nottinghamshire County Council",
    "Hampshire County Council", "North Yorkshire Council", "Wiltshire Council", "Durham County Council",
)
_PRACTICE_LETTERS = "ABCDEFGHJKLMNPY"


def nhs_check_digit(first9: str) -> int | None:
    """Modulus-11 check digit of an NHS number's first nine digits; None when no valid number exists."""
    total = sum(int(d) * (10 - i) for i, d in enumerate(first9))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(number: str) -> bool:
    digits = number.replace(" ", "")
    return len(digits) == 10 and digits.isdigit() and nhs_check_digit(digits[:9]) == int(digits[9])


def nhs_number(ordinal: int, seed: int) -> str:
    """A valid NHS number in the 999 test range, unique per ``ordinal`` (< 900,000) for one seed.

    Each 5-digit block after '999' has at least nine ninth digits that give a valid check digit, so
    ``ordinal // 9`` picks a block (scrambled by an invertible affine map) and ``ordinal % 9`` the digit.
    """
    if not 0 <= ordinal < 900_000:
        raise ValueError(f"ordinal {ordinal} out of range for unique NHS test numbers")
    block = (ordinal // 9 * 7919 + seed * 104_729 + 12_345) % 100_000
    first8 = f"999{block:05d}"
    ninth = [d for d in range(10) if nhs_check_digit(f"{first8}{d}") is not None][ordinal % 9]
    first9 = f"{first8}{ninth}"
    return f"{first9}{nhs_check_digit(first9)}"


# ------------------------------------------------------------------------------------------------------------
# Population
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteSpec:
    """A care home: ``residents`` people, measured with shared kits of devices (one per ``residents_per_kit``)."""

    id: str
    residents: int
    name: str | None = None
    obs_per_day: int | None = None  # None: per resident from the care plan (1, 2 or 4 a day)
    residents_per_kit: int = 12
    care: HomeCare | None = None  # None: the home's own ways (round times, reliability) drawn from the seed


def site_specs(residents: int, per_home: int, *, obs_per_day: int | None = None,
               site_ids: Sequence[str] | None = None) -> list[SiteSpec]:
    """``residents`` in all, in care homes of ``per_home`` (the last one takes the rest): full homes first, so
    adding residents never changes existing ones. Site ids are ``home-01``... unless ``site_ids`` names them."""
    if residents < 0 or not 1 <= per_home <= MAX_RESIDENTS_PER_SITE:
        raise ValueError(f"residents must be >= 0 and per_home 1..{MAX_RESIDENTS_PER_SITE} "
                         f"(got {residents} and {per_home})")
    sizes = [per_home] * (residents // per_home) + ([residents % per_home] if residents % per_home else [])
    if len(sizes) > MAX_SITES:
        raise ValueError(f"{residents} residents in homes of {per_home} make {len(sizes)} homes; at most "
                         f"{MAX_SITES} (use larger homes)")
    ids = list(site_ids) if site_ids is not None else [f"home-{i + 1:02d}" for i in range(len(sizes))]
    if len(ids) != len(sizes):
        raise ValueError(f"{residents} residents in homes of {per_home} make {len(sizes)} homes, "
                         f"but {len(ids)} site ids were given")
    return [SiteSpec(id=site, residents=n, obs_per_day=obs_per_day) for site, n in zip(ids, sizes, strict=True)]


@dataclass(frozen=True)
class Resident:
    id: str
    site_id: str
    index: int
    display_name: str
    sex: str  # 'F' | 'M'
    date_of_birth: date
    nhs_number: str
    gp_practice_code: str
    conditions: frozenset[Condition]
    obs_per_day: int
    kit: str  # the device kit staff use for this resident ('kit-01')
    baseline: Baseline
    routine: ObservationRoutine

    @property
    def scale2(self) -> bool:
        return self.baseline.scale2

    @property
    def baseline_confused(self) -> bool:
        return self.baseline.baseline_confused

    def record(self) -> dict[str, Any]:
        """What the platform needs to seed its database (JSON-friendly)."""
        return {
            "id": self.id,
            "site_id": self.site_id,
            "display_name": self.display_name,
            "sex": self.sex,
            "date_of_birth": self.date_of_birth.isoformat(),
            "nhs_number": self.nhs_number,
            "gp_practice_code": self.gp_practice_code,
            "conditions": sorted(c.value for c in self.conditions),
            "scale2": self.scale2,
            "on_oxygen": self.baseline.on_oxygen,
            "baseline_confused": self.baseline_confused,
            "obs_per_day": self.obs_per_day,
            "round_hours": list(self.routine.round_hours),
            "kit": self.kit,
            "baseline": asdict(self.baseline),
        }


@dataclass(frozen=True)
class Household:
    id: str
    index: int
    name: str
    council: str
    people: int
    profiles: tuple[PersonProfile, ...]
    home: HomeProfile

    @property
    def site_id(self) -> str:
        return self.id  # a household is its own site with its own gateway

    @property
    def consent_vitals(self) -> bool:
        """Whether the household agreed to share clinical vitals with its council: every other household, so a
        simulated estate has both kinds (the council's view must differ between them)."""
        return self.index % 2 == 0

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "council": self.council,
            "people": self.people,
            "consent_vitals": self.consent_vitals,
            "sensors": {role: spec.device_kind.value for role, spec in SENSORS.items()},
        }


def home_care(seed: int, site: SiteSpec, site_pos: int) -> HomeCare:
    """The home's way of working: the site's own if given, else drawn for it from the seed."""
    return site.care or HomeCare.draw(np.random.default_rng([seed, TAG_CARE, site_pos, 0, 0]))


def _draw_resident(seed: int, site: SiteSpec, site_pos: int, index: int, start: datetime,
                   care: HomeCare | None = None) -> Resident:
    rng = np.random.default_rng([seed, TAG_RESIDENT, site_pos, index, 0])
    conditions = draw_conditions(rng)
    baseline = draw_baseline(rng, conditions)
    sex = "F" if rng.random() < 0.7 else "M"
    names = FEMALE_NAMES if sex == "F" else MALE_NAMES
    first = names[int(rng.integers(len(names)))]
    surname = SURNAMES[int(rng.integers(len(SURNAMES)))]
    age_days = int(np.clip(rng.normal(86.0, 6.5), 68.0, 103.0) * 365.25)
    dob = start.date() - timedelta(days=age_days)
    if site.obs_per_day is not None:
        obs = site.obs_per_day
    else:
        obs = int(rng.choice([1, 2, 4], p=[0.1, 0.45, 0.45]))
        if Condition.COPD in conditions:
            obs = max(obs, 2)
    site_rng = np.random.default_rng([seed, TAG_SITE, site_pos, 0, 0])
    practices = [
        f"{_PRACTICE_LETTERS[int(site_rng.integers(len(_PRACTICE_LETTERS)))]}{int(site_rng.integers(10_000, 99_999))}"
        for _ in range(2)
    ]
    return Resident(
        id=f"res-{site.id}-{index + 1:02d}",
        site_id=site.id,
        index=index,
        display_name=f"{first} {surname}",
        sex=sex,
        date_of_birth=dob,
        nhs_number=nhs_number(site_pos * MAX_RESIDENTS_PER_SITE + index, seed),
        gp_practice_code=practices[int(rng.random() < 0.3)],
        conditions=conditions,
        obs_per_day=obs,
        kit=f"kit-{index // site.residents_per_kit + 1:02d}",
        baseline=baseline,
        routine=ObservationRoutine(obs, care or home_care(seed, site, site_pos)),
    )


def _draw_household(seed: int, index: int, prefix: str = "hh") -> Household:
    rng = np.random.default_rng([seed, TAG_HOUSEHOLD, index, 0, 0])
    people = 1 if rng.random() < 0.7 else 2
    profiles = tuple(
        PersonProfile.draw(np.random.default_rng([seed, TAG_PROFILE, index, p, 0])) for p in range(people)
    )
    home = HomeProfile.draw(rng)
    surname = SURNAMES[int(rng.integers(len(SURNAMES)))]
    female = FEMALE_NAMES[int(rng.integers(len(FEMALE_NAMES)))]
    male = MALE_NAMES[int(rng.integers(len(MALE_NAMES)))]
    name = f"{female} {surname}" if rng.random() < 0.65 else f"{male} {surname}"
    if people == 2:
        name = f"{female} and {male} {surname}"
    return Household(
        id=f"{prefix}-{index + 1:02d}",
        index=index,
        name=name,
        council=COUNCILS[int(rng.integers(len(COUNCILS)))],
        people=people,
        profiles=profiles,
        home=home,
    )


# ------------------------------------------------------------------------------------------------------------
# Scenarios resolved against the population
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Resolved:
    spec: Scenario
    onset: datetime
    target_type: str
    target: str
    site_id: str
    resolved_at: datetime | None
    detail: dict[str, Any] = field(default_factory=dict)


class World:
    """A built population with scenarios; stream its events and read its ground truth."""

    def __init__(
        self,
        *,
        seed: int,
        start: datetime,
        tz: tzinfo,
        sites: Sequence[SiteSpec],
        residents: Sequence[Resident],
        households: Sequence[Household],
        scenarios: Sequence[Scenario],
        household_options: HouseholdOptions,
    ) -> None:
        self.seed = seed
        self.start = start
        self.tz = tz
        self.clock = WallClock(start, tz)
        self.sites = tuple(sites)
        self.residents = tuple(residents)
        self.households = tuple(households)
        self.scenarios = tuple(scenarios)
        self.household_options = household_options
        self._by_site: dict[str, list[Resident]] = {s.id: [] for s in self.sites}
        for r in self.residents:
            self._by_site[r.site_id].append(r)
        self._resident = {r.id: r for r in self.residents}
        self._household = {h.id: h for h in self.households}
        self._kits = {
            s.id: [KitCharacter.draw(np.random.default_rng([seed, TAG_KIT, pos, k, 0]))
                   for k in range(-(-s.residents // s.residents_per_kit))]
            for pos, s in enumerate(self.sites)
        }
        self._resident_effects: dict[str, list[Effect]] = {}
        self._household_effects: dict[str, list[Effect]] = {}
        self._long_lies: dict[str, list[tuple[float, float]]] = {}
        self._dead_spells: dict[str, list[DeadSpell]] = {}
        self._dead_kits: dict[tuple[str, str, DeviceKind], list[tuple[float, float]]] = {}
        self._scenario_events: list[DeviceFault | GatewayOutage] = []
        self._resolved: list[_Resolved] = []
        self._weather = Weather(seed)
        self._resolve_scenarios()

    # ---- look-ups -----------------------------------------------------------------------------------------
    def resident(self, resident_id: str) -> Resident:
        return self._resident[resident_id]

    def household(self, household_id: str) -> Household:
        return self._household[household_id]

    def residents_at(self, site_id: str) -> list[Resident]:
        return list(self._by_site[site_id])

    def devices(self) -> list[DeviceRef]:
        """Every device in the world: each care-home kit's three devices and each household's sensors."""
        out = [
            DeviceRef(site.id, kind, f"kit-{k + 1:02d}")
            for site in self.sites
            for k in range(len(self._kits[site.id]))
            for kind in KIT_DEVICE_KINDS
        ]
        out.extend(DeviceRef(h.id, spec.device_kind, role) for h in self.households for role, spec in SENSORS.items())
        return out

    def household_model(self, household_id: str) -> HouseholdModel:
        h = self._household[household_id]
        return HouseholdModel(
            household_id=h.id,
            index=h.index,
            seed=self.seed,
            people=h.profiles,
            home=h.home,
            clock=self.clock,
            weather=self._weather,
            effects=self._household_effects.get(h.id, ()),
            long_lies=self._long_lies.get(h.id, ()),
            dead_spells=self._dead_spells.get(h.id, ()),
            options=self.household_options,
        )

    # ---- scenario resolution ------------------------------------------------------------------------------
    def _pick_resident(self, spec: Scenario, claimed: set[str]) -> Resident:
        t = spec.target
        condition = t.condition or (Condition.COPD if spec.kind is ScenarioKind.COPD_EXACERBATION else None)
        if t.resident is not None:
            if isinstance(t.resident, int):
                if not 0 <= t.resident < len(self.residents):
                    raise ScenarioError(f"scenario {spec.id}: resident index {t.resident} out of range "
                                        f"(the world has {len(self.residents)} residents)")
                resident = self.residents[t.resident]
            elif t.resident in self._resident:
                resident = self._resident[t.resident]
            else:
                raise ScenarioError(f"scenario {spec.id}: no resident {t.resident!r}")
            if condition is not None and condition not in resident.conditions:
                raise ScenarioError(f"scenario {spec.id}: {resident.id} does not have {condition.value}")
            return resident
        for resident in self.residents:
            if resident.id not in claimed and (condition is None or condition in resident.conditions):
                return resident
        wanted = f" with {condition.value}" if condition else ""
        raise ScenarioError(f"scenario {spec.id}: no resident{wanted} left to target")

    def _pick_household(self, spec: Scenario, claimed: set[str]) -> Household:
        t = spec.target
        if t.household is not None:
            if isinstance(t.household, int):
                if not 0 <= t.household < len(self.households):
                    raise ScenarioError(f"scenario {spec.id}: household index {t.household} out of range "
                                        f"(the world has {len(self.households)} households)")
                return self.households[t.household]
            if t.household not in self._household:
                raise ScenarioError(f"scenario {spec.id}: no household {t.household!r}")
            return self._household[t.household]
        free = [h for h in self.households if h.id not in claimed]
        alone = [h for h in free if h.people == 1]
        if alone or (free and not t.living_alone):
            return (alone or free)[0]
        raise ScenarioError(f"scenario {spec.id}: no {'one-person ' if t.living_alone else ''}household left")

    def _site_of(self, spec: Scenario) -> str:
        t = spec.target
        if t.household is not None:
            return self._pick_household(spec, set()).id
        if isinstance(t.site, int):
            if not 0 <= t.site < len(self.sites):
                raise ScenarioError(f"scenario {spec.id}: site index {t.site} out of range")
            return self.sites[t.site].id
        if t.site not in self._by_site:
            if t.site in self._household:
                return str(t.site)
            raise ScenarioError(f"scenario {spec.id}: no site {t.site!r}")
        return str(t.site)

    def _resolve_scenarios(self) -> None:
        claimed_residents: set[str] = set()
        claimed_households: set[str] = set()
        for spec in self.scenarios:
            onset = spec.onset.resolve(self.start, self.tz)
            end = onset + spec.duration
            target_type = spec.info.target
            if target_type == "resident":
                r = self._pick_resident(spec, claimed_residents)
                claimed_residents.add(r.id)
                effect = Effect(spec.id, spec.kind, onset.timestamp(), end.timestamp(), spec.trajectories(onset),
                                spec.info.soft_signs)
                self._resident_effects.setdefault(r.id, []).append(effect)
                self._resolved.append(_Resolved(spec, onset, "resident", r.id, r.site_id, spec.resolved_until(onset),
                                                {"conditions": sorted(c.value for c in r.conditions),
                                                 "scale2": r.scale2, "on_oxygen": r.baseline.on_oxygen,
                                                 "baseline": asdict(r.baseline),
                                                 **course_marks(r.baseline, effect)}))
            elif target_type == "household":
                h = self._pick_household(spec, claimed_households)
                claimed_households.add(h.id)
                if spec.kind is ScenarioKind.LONG_LIE:
                    self._long_lies.setdefault(h.id, []).append((onset.timestamp(), end.timestamp()))
                else:
                    effect = Effect(spec.id, spec.kind, onset.timestamp(), end.timestamp(),
                                    spec.trajectories(onset))
                    self._household_effects.setdefault(h.id, []).append(effect)
                self._resolved.append(_Resolved(spec, onset, "household", h.id, h.id, spec.resolved_until(onset),
                                                {"people": h.people}))
            elif target_type == "device":
                self._resolve_device_fault(spec, onset, end)
            else:
                site_id = self._site_of(spec)
                self._scenario_events.append(GatewayOutage(onset, end, site_id, spec.id))
                self._resolved.append(_Resolved(spec, onset, "site", site_id, site_id, end,
                                                {"outage_s": spec.duration.total_seconds(),
                                                 "readings_lost_expected": 0}))
        self._scenario_events.sort(key=attrgetter("at"))

    def _resolve_device_fault(self, spec: Scenario, onset: datetime, end: datetime) -> None:
        t = spec.target
        assert spec.fault is not None and t.device is not None
        params = spec.fault_params()
        if t.household is not None:
            site_id = self._pick_household(spec, set()).id
            if t.device not in SENSORS:
                raise ScenarioError(f"scenario {spec.id}: households have no sensor {t.device!r} "
                                    f"(roles: {', '.join(SENSORS)})")
            kind = SENSORS[t.device].device_kind
            if t.device_kind is not None and t.device_kind is not kind:
                raise ScenarioError(f"scenario {spec.id}: {t.device} is a {kind.value}, not {t.device_kind.value}")
        else:
            site_id = self._site_of(spec)
            kits = [f"kit-{k + 1:02d}" for k in range(len(self._kits[site_id]))]
            if t.device not in kits:
                raise ScenarioError(f"scenario {spec.id}: site {site_id} has no {t.device!r} (kits: {', '.join(kits)})")
            assert t.device_kind is not None
            if t.device_kind not in KIT_DEVICE_KINDS:
                raise ScenarioError(f"scenario {spec.id}: kits hold {', '.join(k.value for k in KIT_DEVICE_KINDS)}")
            kind = t.device_kind
        ref = DeviceRef(site_id, kind, t.device)
        until: datetime | None = end
        detail: dict[str, Any] = {"device": asdict(ref), "fault": spec.fault.kind.value, "params": dict(params)}
        if spec.fault.kind is FaultKind.FLAT_BATTERY:
            dead_at = onset + timedelta(hours=float(params["hours_to_flat"]))
            back_at = dead_at + spec.fault.replaced_after if spec.fault.replaced_after is not None else None
            until = back_at
            params = {**params, "dead_at": dead_at.isoformat()}
            detail["dead_at"] = dead_at.isoformat()
            if t.household is not None:
                self._dead_spells.setdefault(site_id, []).append(DeadSpell(
                    t.device, onset.timestamp(), dead_at.timestamp(),
                    back_at.timestamp() if back_at else None, float(params["start_pct"])))
            else:
                self._dead_kits.setdefault((site_id, t.device, kind), []).append(
                    (dead_at.timestamp(), back_at.timestamp() if back_at else float("inf")))
        self._scenario_events.append(DeviceFault(onset, ref, spec.fault.kind, params, until, spec.id))
        self._resolved.append(_Resolved(spec, onset, "device", f"{site_id}/{kind.value}/{t.device}", site_id,
                                        until, detail))

    # ---- streaming ----------------------------------------------------------------------------------------
    def _site_events(self, site: SiteSpec, site_pos: int, start: datetime, end: datetime) -> Iterator[Event]:
        residents = self._by_site[site.id]
        kits = self._kits[site.id]
        per_kit = site.residents_per_kit
        dead = {key[1:]: spans for key, spans in self._dead_kits.items() if key[0] == site.id}
        for day in range(self.clock.day_of(start), self.clock.day_of(end) + 1):
            wall_to_epoch = partial(self.clock.to_epoch, day)
            events: list[Event] = []
            for r in residents:
                alive = None
                if dead:
                    alive = partial(_kit_alive, dead, r.kit)
                events.extend(resident_day(
                    rng=np.random.default_rng([self.seed, TAG_RESIDENT_DAY, site_pos, r.index, day + 10_000]),
                    resident_id=r.id,
                    site_id=site.id,
                    kit=r.kit,
                    kit_character=kits[r.index // per_kit],
                    baseline=r.baseline,
                    routine=r.routine,
                    effects=self._resident_effects.get(r.id, ()),
                    wall_to_epoch=wall_to_epoch,
                    slot_s=(r.index % per_kit) * 300.0,
                    device_alive=alive,
                ))
            events.sort(key=attrgetter("at"))
            for e in events:
                if start <= e.at < end:
                    yield e

    def events(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[Event]:
        """Every event in [start, end) in time order (start defaults to, and is clamped at, the sim start)."""
        start = max(start or self.start, self.start)
        if end is None:
            raise ValueError("events() needs an end time (the world has no natural end)")
        streams: list[Iterator[Event]] = [
            self._site_events(site, pos, start, end) for pos, site in enumerate(self.sites) if site.residents
        ]
        streams.extend(self.household_model(h.id).events(start, end) for h in self.households)
        streams.append(e for e in self._scenario_events if start <= e.at < end)
        return heapq.merge(*streams, key=attrgetter("at"))

    # ---- ground truth -------------------------------------------------------------------------------------
    def ground_truth(self) -> list[dict[str, Any]]:
        """One row per expected (or forbidden) alert of every scenario, JSON-friendly."""
        rows = []
        for res in self._resolved:
            spec = res.spec
            expectations = spec.expectations()
            for n, exp in enumerate(expectations):
                suffix = f"#{n + 1}" if len(expectations) > 1 else ""
                rows.append(asdict(GroundTruthRow(
                    id=f"{spec.id}{suffix}",
                    scenario=spec.id,
                    kind=spec.kind.value,
                    target_type=res.target_type,
                    target=res.target,
                    site=res.site_id,
                    onset=res.onset.isoformat(),
                    progression_end=(res.onset + spec.duration).isoformat(),
                    resolved_at=res.resolved_at.isoformat() if res.resolved_at else None,
                    expected_alert=exp.alert.value if exp.alert else None,
                    expected_by=(res.onset + exp.within).isoformat(),
                    must_not=[a.value for a in exp.must_not],
                    description=spec.description or spec.info.why,
                    detail=res.detail,
                )))
        return rows

    def write_ground_truth(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for row in self.ground_truth():
                fh.write(json.dumps(row, sort_keys=True) + "\n")
        return path

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Residents, households and devices, for seeding the platform's database."""
        return {
            "sites": [{"id": s.id, "name": s.name or s.id, "residents": s.residents} for s in self.sites],
            "residents": [r.record() for r in self.residents],
            "households": [h.record() for h in self.households],
            "devices": [asdict(d) for d in self.devices()],
        }


def _kit_alive(dead: dict[tuple[str, DeviceKind], list[tuple[float, float]]], kit: str, kind: DeviceKind,
               epoch: float) -> bool:
    return not any(a <= epoch < b for a, b in dead.get((kit, kind), ()))


def build_world(
    *,
    seed: int,
    sites: Sequence[SiteSpec],
    households: int,
    scenarios: Sequence[Scenario],
    start: datetime,
    tz: str | tzinfo = "Europe/London",
    household_options: HouseholdOptions | None = None,
    household_prefix: str = "hh",
) -> World:
    """Draw the population for ``seed`` and attach ``scenarios``. Raises ScenarioError for bad targets.

    Households are ``<household_prefix>-01``...: another prefix lets two worlds share one database."""
    if seed < 0:
        raise ValueError("seed must be a non-negative integer")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    ids = [s.id for s in sites]
    if len(ids) > MAX_SITES:
        raise ValueError(f"{len(ids)} care homes; a world holds at most {MAX_SITES}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"site ids must be unique: {ids}")
    for site in sites:
        if not 0 <= site.residents <= MAX_RESIDENTS_PER_SITE:
            raise ValueError(f"site {site.id}: 0..{MAX_RESIDENTS_PER_SITE} residents, not {site.residents}")
        if site.residents_per_kit < 1:
            raise ValueError(f"site {site.id}: residents_per_kit must be at least 1")
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    cares = [home_care(seed, site, pos) for pos, site in enumerate(sites)]
    residents = [
        _draw_resident(seed, site, pos, i, start, cares[pos])
        for pos, site in enumerate(sites) for i in range(site.residents)
    ]
    homes = [_draw_household(seed, i, household_prefix) for i in range(households)]
    return World(seed=seed, start=start, tz=zone, sites=sites, residents=residents, households=homes,
                 scenarios=scenarios, household_options=household_options or HouseholdOptions())

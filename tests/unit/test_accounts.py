"""Connected accounts, pure logic: the account path, batches that never mix accounts, one
session provider per account, and each account's meters deciding its own events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.batching import Batch, Batcher
from connector.config import MappingConfig
from connector.errors import RecordError
from connector.mapping import Mapper, MeterEventBody
from connector.meter_gate import MeterGate
from connector.meters import Meter, MeterCatalog
from connector.offsets import PartitionOffsets, PendingRecord
from connector.session import AccountSessions, Session

NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z


def _record(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "rec-1",
        "customer": "cus_123",
        "event_name": "api_requests",
        "value": 25,
        "timestamp": "2024-06-01T11:59:00.000Z",
        "region": "eu",
    }
    record.update(fields)
    return record


def _mapper(**mapping: Any) -> Mapper:
    return Mapper(MappingConfig(**mapping), clock=lambda: NOW)


def _events(mapper: Mapper, record: dict[str, Any]) -> list[MeterEventBody]:
    return mapper.map(record, topic="usage", partition=1, offset=7, kafka_timestamp_ms=None)


# -- the mapping ---------------------------------------------------------------------------


def test_the_account_is_read_beside_the_event_which_stays_exactly_the_same() -> None:
    plain = _mapper()
    routed = _mapper(stripe_account="account")
    record = _record(account="acct_1Abc")
    # Same body, same identifier, and the account field is no dimension.
    assert _events(routed, record) == _events(plain, _record())
    assert routed.account(record) == "acct_1Abc"
    assert plain.account(record) is None  # no path configured: the platform


def test_a_derived_identifier_does_not_depend_on_the_account() -> None:
    routed = _mapper(stripe_account="tenant.stripe", identifier=None)
    one = _events(routed, _record(tenant={"stripe": "acct_A1"}))
    other = _events(routed, _record(tenant={"stripe": "acct_B2"}))
    assert one[0]["identifier"] == other[0]["identifier"]
    assert routed.account(_record(tenant={"stripe": "acct_B2"})) == "acct_B2"


@pytest.mark.parametrize(
    ("account", "reason", "says"),
    [
        (..., "mapping_error", "connected account is missing (no value at 'account')"),
        ("  ", "mapping_error", "connected account at 'account' is empty"),
        ("cus_123", "mapping_error", "is not a Stripe account id"),
        ("acct_", "mapping_error", "is not a Stripe account id"),
        ("acct_1/acct_2", "mapping_error", "is not a Stripe account id"),
        (42, "schema_violation", "must be a string, not a number"),
    ],
)
def test_a_missing_or_invalid_account_is_refused_with_a_reason(
    account: object, reason: str, says: str
) -> None:
    record = _record() if account is ... else _record(account=account)
    with pytest.raises(RecordError) as caught:
        _mapper(stripe_account="account").account(record)
    assert caught.value.reason == reason
    assert says in caught.value.message


# -- batching ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tracked(state: PartitionOffsets, offset: int, account: str | None) -> PendingRecord:
    record = state.track(None, offset)
    record.account = account
    return record


def _event(i: int) -> MeterEventBody:
    return {
        "event_name": "api_requests",
        "identifier": f"id-{i}",
        "timestamp": "2024-06-01T12:00:00.000Z",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
    }


def test_batches_never_mix_accounts_and_fill_per_account() -> None:
    state = PartitionOffsets("usage", 0)
    batcher = Batcher(3, 10.0, clock=Clock())
    accounts = ["acct_A", "acct_B", None]
    for i in range(10):  # interleaved: A B None A B None ...
        batcher.add([_event(i)], _tracked(state, i, accounts[i % 3]))
    full = batcher.due()
    assert sorted((b.account or "", len(b)) for b in full) == [
        ("", 3),
        ("acct_A", 3),
        ("acct_B", 3),
    ]
    rest = batcher.due(force=True)
    assert [(b.account, len(b)) for b in rest] == [("acct_A", 1)]
    for batch in full + rest:
        assert {r.account for r in batch.records} == {batch.account}
        left, right = batch.split() if len(batch) > 1 else (batch, batch)
        assert left.account == right.account == batch.account


def test_each_account_lingers_on_its_own() -> None:
    clock = Clock()
    state = PartitionOffsets("usage", 0)
    batcher = Batcher(100, 0.05, clock=clock)
    batcher.add([_event(1)], _tracked(state, 1, "acct_A"))
    clock.now = 0.03
    batcher.add([_event(2)], _tracked(state, 2, "acct_B"))
    assert batcher.seconds_until_due() == pytest.approx(0.02)  # A's linger ends first
    assert batcher.buffered_events == 2
    clock.now = 0.06
    assert [b.account for b in batcher.due()] == ["acct_A"]
    assert batcher.seconds_until_due() == pytest.approx(0.02)
    clock.now = 0.09
    assert [b.account for b in batcher.due()] == ["acct_B"]
    assert batcher.seconds_until_due() is None
    assert batcher.buffered_events == 0


def test_a_handed_over_record_leaves_its_batch_but_the_batch_keeps_its_account() -> None:
    kept, gone = PartitionOffsets("usage", 0), PartitionOffsets("usage", 1)
    batcher = Batcher(100, 0.0, clock=Clock())
    batcher.add([_event(1)], _tracked(kept, 1, "acct_A"))
    batcher.add([_event(2)], _tracked(gone, 2, "acct_A"))
    gone.closed = True
    (batch,) = batcher.due()
    live = batch.drop_closed()
    assert len(live) == 1
    assert live.account == "acct_A"


# -- sessions ------------------------------------------------------------------------------


def test_each_account_has_its_own_session_created_once_and_renewed_on_its_own() -> None:
    created: list[str | None] = []
    clock = [1_000.0]

    async def create(account: str | None) -> Session:
        created.append(account)
        await asyncio.sleep(0)
        lifetime = 10.0 if account == "acct_short" else 900.0
        n = len(created)
        return Session(f"mes_{n}", f"tok_{n}", clock[0] + lifetime, account=account)

    sessions = AccountSessions(create, renew_margin_seconds=60, clock=lambda: clock[0])

    async def scenario() -> None:
        # 21 concurrent requests over three accounts: one creation per account.
        got = await asyncio.gather(
            *(
                sessions.provider(account).current()
                for account in ["acct_short", "acct_long", None] * 7  # 21 requests
            )
        )
        assert sorted(created, key=str) == sorted(["acct_short", "acct_long", None], key=str)
        asked = ["acct_short", "acct_long", None] * 7
        assert [s.account for s in got] == asked
        # The short session is due (half its life), the others are not.
        clock[0] += 6.0
        renewed = await sessions.provider("acct_short").current()
        assert renewed.account == "acct_short"
        assert renewed.id not in {s.id for s in got}
        assert (await sessions.provider("acct_long").current()) in got
        assert (await sessions.provider(None).current()) in got

    asyncio.run(scenario())
    assert created.count("acct_short") == 2
    assert created.count("acct_long") == 1
    assert sessions.renewals == 4
    assert sessions.seconds_until_expiry() == pytest.approx(10.0)  # the soonest
    assert set(sessions.accounts) == {"acct_short", "acct_long", None}


# -- meters per account --------------------------------------------------------------------


def test_an_accounts_events_are_decided_by_that_accounts_meters_listed_on_first_use() -> None:
    listed: list[str] = []
    refused: list[tuple[int, str]] = []

    def catalog_for(account: str) -> MeterCatalog:
        async def fetch() -> list[Meter]:
            listed.append(account)
            names = {"acct_A": ["api_requests"], "acct_B": ["searches"]}[account]
            return [
                Meter(f"mtr_{account}_{n}", n, "active", "sum", "stripe_customer_id", "value")
                for n in names
            ]

        return MeterCatalog((), fetch=fetch, account=account, listed=False)

    platform = MeterCatalog(
        [Meter("mtr_p", "api_requests", "active", "sum", "stripe_customer_id", "value")]
    )
    gate = MeterGate(
        platform,
        MappingConfig(),
        refuse=lambda record, reason, _msg: refused.append((record.offset, reason)),
        catalog_for=catalog_for,
    )
    state = PartitionOffsets("usage", 0)
    name = {0: "api_requests", 1: "api_requests", 2: "searches", 3: "api_requests"}
    accounts = {0: None, 1: "acct_A", 2: "acct_A", 3: "acct_B"}
    taken = [
        offset
        for offset in range(4)
        if gate.take(
            _tracked(state, offset, accounts[offset]),
            [{**_event(offset), "event_name": name[offset]}],
        )
    ]
    assert taken == [0]  # the platform's list is known; the accounts' are not listed yet

    async def turns() -> list[int]:
        released: list[int] = []
        for _ in range(5):
            released += [record.offset for record, _events in gate.turn()]
            await asyncio.sleep(0)
        await gate.close()
        return released

    assert asyncio.run(turns()) == [1]  # acct_A has api_requests
    assert sorted(refused) == [(2, "no_active_meter"), (3, "no_active_meter")]
    assert sorted(listed) == ["acct_A", "acct_B"]  # once each
    assert (
        "connected account acct_B"
        in (
            gate.catalog_of("acct_B").check("api_requests", "stripe_customer_id", "value")
            or ("", "")
        )[1]
    )


# -- reconcile -----------------------------------------------------------------------------


def test_reconcile_rows_name_their_account_only_when_accounts_are_compared() -> None:
    from connector.reconcile import Row, render

    row = Row("api_requests", "cus_1", "mtr_1", "sum", 5, 5.0)
    plain = render([row], "summary")
    assert plain[0].startswith("EVENT NAME")
    assert "account" not in row.to_json()
    routed = Row("api_requests", "cus_1", "mtr_1", "sum", 5, 3.0, account="acct_1A")
    lines = render([routed], "summary")
    assert lines[0].split()[:3] == ["ACCOUNT", "EVENT", "NAME"]
    assert lines[1].split() == [
        "acct_1A",
        "api_requests",
        "cus_1",
        "mtr_1",
        "sum",
        "5",
        "3",
        "-2",
        "differs",
    ]
    assert routed.to_json()["account"] == "acct_1A"


# -- an account Stripe refuses -------------------------------------------------------------


def test_a_refused_accounts_batch_is_dead_lettered_whole_and_other_accounts_go_on() -> None:
    from connector.config import DeliveryConfig, RateLimitConfig
    from connector.delivery import Delivery
    from connector.errors import RejectedBatchError
    from connector.ratelimit import RateLimiter

    refusals = {"acct_gone": 1, None: 1}  # the platform's own refusal passes (an outage)
    sent: list[tuple[str | None, int]] = []
    dead: list[tuple[str, str, str]] = []
    accepted: list[str | None] = []
    sleeps: list[float] = []

    async def create(account: str | None) -> Session:
        if refusals.get(account, 0) > 0:
            if account is None:
                refusals[None] -= 1
            raise RejectedBatchError(
                f"HTTP 400 from Stripe creating a meter event session for {account}: deleted",
                status=400,
            )
        return Session(f"mes_{account}", "tok", 1e12, account=account)

    class Sender:
        async def send_events(self, events: list[MeterEventBody], session: Session) -> str:
            sent.append((session.account, len(events)))
            return "req_ok"

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    delivery = Delivery(
        Sender(),
        AccountSessions(create, renew_margin_seconds=60),
        DeliveryConfig(backoff_initial_seconds=0.1, backoff_max_seconds=1.0),
        limiter=RateLimiter(RateLimitConfig(), workers=1),
        on_accepted=lambda batch, _rid: accepted.append(batch.account),
        on_dead=lambda record, reason, message, _rid, event: dead.append(
            (event["identifier"], reason, message)
        ),
        sleep=sleep,
        wall_clock=lambda: NOW,
    )
    state = PartitionOffsets("usage", 0)

    def batch(account: str | None, count: int) -> Batch:
        made = Batch(account=account)
        for i in range(count):
            made.events.append(_event(i))
            made.records.append(_tracked(state, i, account))
        return made

    async def scenario() -> None:
        await asyncio.gather(
            delivery.deliver(batch("acct_gone", 5)),
            delivery.deliver(batch("acct_fine", 3)),
            delivery.deliver(batch(None, 2)),
        )

    asyncio.run(scenario())
    assert [(i, r) for i, r, _m in dead] == [(f"id-{i}", "rejected_by_stripe") for i in range(5)]
    assert all("acct_gone" in message for _i, _r, message in dead)
    assert sorted(sent, key=str) == sorted([("acct_fine", 3), (None, 2)], key=str)
    assert sorted(accepted, key=str) == sorted(["acct_fine", None], key=str)
    assert len(sleeps) == 1  # the platform's refusal was retried once, as an outage


def test_a_refused_accounts_listing_dead_letters_its_held_records() -> None:
    from connector.errors import StripeError

    refused: list[tuple[int, str, str]] = []

    def catalog_for(account: str) -> MeterCatalog:
        async def fetch() -> list[Meter]:
            raise StripeError(f"HTTP 400 from Stripe listing billing meters of {account}: gone")

        return MeterCatalog((), fetch=fetch, account=account, listed=False)

    gate = MeterGate(
        MeterCatalog(()),
        MappingConfig(),
        refuse=lambda record, reason, message: refused.append((record.offset, reason, message)),
        catalog_for=catalog_for,
    )
    state = PartitionOffsets("usage", 0)
    assert not gate.take(_tracked(state, 0, "acct_gone"), [_event(0)])

    async def turns() -> None:
        for _ in range(5):
            assert gate.turn() == []
            await asyncio.sleep(0)
        await gate.close()

    asyncio.run(turns())
    assert [(offset, reason) for offset, reason, _m in refused] == [(0, "rejected_by_stripe")]
    assert "acct_gone" in refused[0][2]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([None, "acct_A", "acct_B", "acct_C"]), st.integers(1, 4)),
        max_size=60,
    ),
    st.integers(1, 7),
    st.lists(st.booleans(), max_size=60),
)
def test_any_interleaving_batches_each_account_in_order_and_never_mixes(
    records: list[tuple[str | None, int]], max_events: int, ticks: list[bool]
) -> None:
    clock = Clock()
    batcher = Batcher(max_events, 0.5, clock=clock)
    state = PartitionOffsets("usage", 0)
    sent: list[Batch] = []
    added: dict[str | None, list[str]] = {}
    for offset, (account, count) in enumerate(records):
        events = [
            {**_event(offset), "identifier": f"{offset}-{i}"}  # type: ignore[typeddict-item]
            for i in range(count)
        ]
        batcher.add(events, _tracked(state, offset, account))  # type: ignore[arg-type]
        added.setdefault(account, []).extend(e["identifier"] for e in events)
        if offset < len(ticks) and ticks[offset]:
            clock.now += 0.3
            sent += batcher.due()
    sent += batcher.due(force=True)
    assert batcher.buffered_events == 0
    assert batcher.seconds_until_due() is None
    got: dict[str | None, list[str]] = {}
    for batch in sent:
        assert 1 <= len(batch) <= max_events
        assert {r.account for r in batch.records} == {batch.account}
        got.setdefault(batch.account, []).extend(e["identifier"] for e in batch.events)
    assert got == added  # every event once, in its account's order

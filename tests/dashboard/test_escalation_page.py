"""The Escalation page (AppTest against the real API): the home's policy with its gaps, and the delivery log."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
from dashboard_world import DashWorld
from streamlit.testing.v1 import AppTest

from carewatch.notify import deliveries, store
from carewatch.notify.policy import ChannelName, Contact, default_policy


def test_escalation_page_shows_the_policy_gaps_and_who_was_told(sign_in: Callable[..., AppTest], estate: DashWorld,
                                                                 database: str) -> None:
    policy = default_policy()
    policy.levels[1].contacts = [Contact(channel=ChannelName.SMS, recipient="07700900555", name="Senior Sue")]
    with psycopg.connect(database) as conn:
        store.save(conn, estate.home_a, policy, estate.users["manager"])
        deliveries.record_nobody(conn, site_id=estate.home_a, target_kind="alert", target_id=estate.alert_id or 0,
                                 level=3, reason="unacknowledged", at=datetime.now(UTC), level_name="Manager on call")
    at = sign_in(estate.users["manager"])
    at.switch_page("pages/escalation.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    text = "\n".join(m.value for m in at.markdown) + "\n".join(w.value for w in at.warning)
    assert "Senior Sue (sms: 07700900555)" in text
    assert "Gap: level 3 (Manager on call) has nobody on it" in text
    [table] = at.dataframe
    rows = table.value.to_dict("records")
    assert {"Level": 3, "Channel": "none", "To": "nobody", "Result": "NOBODY ON THE ROTA"}.items() <= rows[0].items()

"""Hypothesis strategies for the state's values, shared by the tests of its encoders."""

from __future__ import annotations

from hypothesis import strategies as st

from reconciler.model import DispatchKey, Spec
from reconciler.state.base import Record

IDS = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=8)
TEXT = st.text()  # any code point: quotes, backslashes, control characters, surrogates' kin
_ODD = st.floats(allow_nan=False) | st.booleans() | st.integers() | st.none() | TEXT
SPECS = st.builds(Spec, cron=st.none() | TEXT, cron_timezone=st.none() | TEXT,
                  period=st.none() | TEXT, dispatch_interval=st.none() | st.integers(),
                  start_datetime=st.none() | st.integers(), remark=st.none() | TEXT)
RECORDS = st.builds(
    Record, key=st.builds(DispatchKey, IDS, IDS, IDS), name=TEXT, source=TEXT,
    dispatch_id=TEXT, spec=SPECS,
    # Declared int | None, but whatever a state file held is read back as it was: floats and
    # booleans included, which the templates leave to the general encoder.
    created_date=_ODD, last_modified_date=st.none() | st.integers(), applied_at=TEXT,
    applied_by=TEXT, commit=st.none() | TEXT, ci_job=st.none() | TEXT,
    version=st.integers())

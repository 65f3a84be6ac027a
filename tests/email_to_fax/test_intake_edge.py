"""The edge of ``Intake.accept``: an unexpected failure inside it becomes a
temporary refusal (451, docs/architecture.md: any internal error answers 4xx),
and nothing is stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.reliability import config_data, in_process, load, message, pdf_bytes, stored_jobs

from gatewayd.email_to_fax.errors import TemporaryFailure
from gatewayd.email_to_fax.intake import Intake
from gatewayd.email_to_fax.policy import Authorisation, NumberPolicy
from gatewayd.provider.simulator import run_simulator


async def test_an_unexpected_failure_in_intake_becomes_a_temporary_refusal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with run_simulator() as sim:
        config = load(config_data(state, sim=sim, smtp_port=2525))
        async with in_process(config) as h:

            def broken(path: Path) -> int:
                raise RuntimeError("the free-space check broke")

            h.rt.free_space = broken
            auth = Authorisation(extension=122, max_pages=10, report_to="alice@example.com", rule=None, user=None)
            destination = NumberPolicy(config.numbers).check("+78123092631", "+78123092631")
            with pytest.raises(TemporaryFailure) as err:
                await Intake(h.rt).accept(message(pdf_bytes(1), subject="x"), authorisation=auth, destinations=[destination],
                                          source="imap", report_to="alice@example.com")
            assert err.value.smtp_reply.startswith("451"), err.value.smtp_reply
            assert isinstance(err.value.__cause__, RuntimeError)
        assert stored_jobs(state) == []

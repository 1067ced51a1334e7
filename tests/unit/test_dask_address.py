"""The dask.address setting and the scheduler check every cluster command runs before it starts."""

from __future__ import annotations

import socket

import pytest
from hotswap.components.core.dask_address import check_scheduler, scheduler_host_port
from hotswap.components.core.errors import InputError, ServiceError, classify
from hotswap.components.core.settings import load_settings
from pydantic import ValidationError


def test_addresses_parse_with_the_default_port_and_other_schemes_are_refused() -> None:
    assert scheduler_host_port("tcp://10.0.0.5:9000") == ("10.0.0.5", 9000)
    assert scheduler_host_port("scheduler:8786") == ("scheduler", 8786)
    assert scheduler_host_port("tls://scheduler") == ("scheduler", 8786)
    with pytest.raises(InputError, match="http://x:1"):
        scheduler_host_port("http://x:1")


def test_the_setting_refuses_what_is_not_an_address_and_blank_means_none() -> None:
    assert load_settings(dask={"address": "  "}).dask.address is None
    assert load_settings(dask={"address": "tcp://s:8786"}).dask.address == "tcp://s:8786"
    with pytest.raises(ValidationError, match="dask.address"):
        load_settings(dask={"address": "not an address"})
    with pytest.raises(ValidationError):
        load_settings(dask={"adress": "tcp://s:8786"})  # a misspelt key is an error


def test_a_listening_scheduler_passes_and_a_closed_port_is_a_service_failure_naming_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_scheduler(f"tcp://127.0.0.1:{server.getsockname()[1]}", 2.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(ServiceError) as caught:
        check_scheduler(closed, 2.0)
    failure = classify(caught.value)
    assert failure.exit_code == 5 and closed in failure.line()

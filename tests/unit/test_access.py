"""What the controller needs so that nothing else on the fleet's network can steer it."""

from __future__ import annotations

import socket

import pytest

from sandbox.errors import BalancerError
from sandbox.fleet.access import controller_address, new_secret


def test_the_controller_address_is_the_source_the_kernel_picks() -> None:
    assert controller_address("127.0.0.1") == "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the same question, asked by hand
        probe.connect(("127.0.0.2", 9))
        assert controller_address("127.0.0.2") == probe.getsockname()[0]


@pytest.mark.parametrize("bad", ["", "lb.example", "1.2.3.4; deny"])
def test_a_bad_admin_address_is_a_balancer_error(bad: str) -> None:
    with pytest.raises(BalancerError, match="admin address"):
        controller_address(bad)


def test_secrets_are_fresh_and_long() -> None:
    one, two = new_secret(), new_secret()
    assert one != two and len(one) == 32 and int(one, 16) >= 0

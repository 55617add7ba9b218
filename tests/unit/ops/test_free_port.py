"""Ports chosen for listeners started later lie below the kernel's ephemeral range, where no
outgoing connection can take them in the meantime."""

from __future__ import annotations

import socket

from tools.dev.embedded import free_port, listen_ports


def test_a_free_port_is_below_the_ephemeral_range_and_can_be_listened_on() -> None:
    ports = listen_ports()
    chosen = {free_port() for _ in range(20)}
    if ports is not None:  # a kernel that says where its ephemeral range is
        assert all(port in ports for port in chosen), chosen
    for port in chosen:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_preferred_port_that_is_free_is_kept() -> None:
    port = free_port()
    assert free_port(preferred=port) == port


def test_a_preferred_port_in_use_is_not_handed_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        assert free_port(preferred=taken) != taken

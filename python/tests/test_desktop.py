"""Screenshots and input under a real Xvfb, checked by an independent X client (the x-recorder
window of the Rust tests, which prints the events it receives). Skipped, saying why, only when
Xvfb is not installed."""

from __future__ import annotations

import pytest

from tether_client import Agent, ConsentRequiredError, ProtocolError
from harness import AgentProc, Xvfb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_screenshot_png_at_native_size_and_scaled_jpeg(desktop: Agent, xvfb: Xvfb) -> None:
    shot = await desktop.screenshot()
    assert shot.format == "png" and shot.data.startswith(PNG_MAGIC)
    assert (shot.width, shot.height) == (xvfb.width, xvfb.height)
    assert (shot.native_width, shot.native_height) == (xvfb.width, xvfb.height)

    small = await desktop.screenshot(max_width=512, format="jpeg", quality=60, cursor=True)
    assert small.format == "jpeg" and small.data.startswith(b"\xff\xd8\xff")
    assert (small.width, small.height) == (512, 384)
    assert (small.native_width, small.native_height) == (xvfb.width, xvfb.height)
    assert small.cursor


async def test_click_move_scroll_key_and_text_reach_a_window(desktop: Agent, xvfb: Xvfb) -> None:
    window = xvfb.recorder(100, 100, 400, 300)
    try:
        await desktop.click(250, 200)
        window.expect("a left click at (250, 200)", lambda line: line == "button 1 250 200")
        await desktop.click(260, 210, button="right")
        window.expect("a right click", lambda line: line == "button 3 260 210")
        # In the space of a 512x384 screenshot: (150, 100) is native (300, 200) + half a pixel.
        await desktop.click(150, 100, space=(512, 384))
        window.expect("a mapped click", lambda line: line == "button 1 301 201")

        await desktop.move_pointer(320, 230)
        await desktop.scroll(dy=2)  # at the pointer: wheel down is button 5
        window.expect("wheel down at the pointer", lambda line: line == "button 5 320 230")
        await desktop.scroll(dy=-1, at=(200, 150))
        window.expect("wheel up at (200, 150)", lambda line: line == "button 4 200 150")

        await desktop.type_text("Hi é→")
        window.expect("the typed text", lambda _: window.typed() == "Hi é→")
        await desktop.key("Escape")
        window.expect("Escape", lambda line: line.startswith("key 0xff1b "))
        await desktop.key("ctrl+alt+t")
        window.expect("ctrl+alt+t", lambda line: line.startswith("key 0x74 "))
    finally:
        window.stop()


async def test_off_screen_points_are_protocol_errors(desktop: Agent, xvfb: Xvfb) -> None:
    with pytest.raises(ProtocolError):
        await desktop.click(xvfb.width + 10, 5)


async def test_without_consent_input_is_refused_and_screenshots_still_work(nc, nats_server, xvfb: Xvfb) -> None:  # type: ignore[no-untyped-def]
    proc = AgentProc(nats_server, env={"DISPLAY": xvfb.display})
    try:
        agent = Agent(nc, proc.ws, proc.id)
        with pytest.raises(ConsentRequiredError):
            await agent.click(10, 10)
        with pytest.raises(ConsentRequiredError):
            await agent.type_text("nope")
        assert (await agent.screenshot(max_width=256)).width == 256
    finally:
        proc.stop()

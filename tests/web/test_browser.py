"""The web client in a real browser: alice and bob in two Chromium contexts against the dev app on a
real server, which is restarted (same port) while their pages stay open."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

import chat_api.web.dev
from chat_api.app import create_app
from chat_api.auth import streamcookie
from chat_api.auth.tokens import mint_token
from chat_api.devserver import create_dev_app
from tests.support.ports import free_port
from tests.support.servers import serve
from tests.support.settings import TEST_SECRET, make_settings
from tests.web.browser import ARTIFACTS

TIMEOUT_MS = 20_000


class Person:
    """One browser context (its own cookies and storage) with one page, signed in as `name`."""

    def __init__(self, name: str, page: Any) -> None:
        self.name = name
        self.page = page
        self.urls: list[str] = []
        self.problems: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.problems.append(f"CSP: {message.text}")

    def message(self, text: str) -> Any:
        """The sent (not pending) message whose body is exactly `text`."""
        return self.page.locator("#messages li.message:not(.pending)").filter(
            has=self.page.locator(".body", has_text=re.compile(f"^{re.escape(text)}$"))
        )

    def room(self, name: str) -> Any:
        return self.page.locator("#room-list li").filter(has=self.page.locator(".room-name", has_text=name))

    def direct(self, name: str) -> Any:
        """A direct room in the list of direct messages, by the other person's name."""
        return self.page.locator("#dm-list li").filter(has=self.page.locator(".room-name", has_text=name))

    async def create_room(self, name: str, *members: str) -> None:
        from playwright.async_api import expect

        page = self.page
        if await page.locator("#new-room-box").get_attribute("open") is None:
            await page.get_by_text("New room", exact=True).click()
        await page.get_by_label("Room name").fill(name)
        await page.get_by_label("Members").fill(", ".join(members))
        await page.get_by_role("button", name="Create room").click()
        await expect(page.locator("#room-title")).to_have_text(name)

    async def sign_in(self, base: str) -> None:
        from playwright.async_api import expect

        await self.page.goto(base + "/")
        await self.page.get_by_label("Your name").fill(self.name)
        await self.page.get_by_label("Your name").press("Enter")  # keyboard only
        await expect(self.page.locator("#me")).to_have_text(self.name)
        await expect(self.page.locator("#connection")).to_have_text("Live")

    async def say(self, text: str) -> None:
        box = self.page.get_by_label("Message", exact=True)
        await box.fill(text)
        await box.press("Enter")

    async def token(self) -> str:
        return str(await self.page.evaluate("sessionStorage.getItem('chat-api.token')"))


async def test_two_people_chat_in_real_browsers_across_a_server_restart(
    browser: Any, database_url: str
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    settings = make_settings(database_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lunch, history = f"Lunch {tag}", f"History {tag}"

    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve(settings, create_dev_app(settings), port))
        contexts = [await browser.new_context(viewport={"width": 760, "height": 720}) for _ in range(2)]
        for context in contexts:
            stack.push_async_callback(context.close)
        alice = Person(f"alice-{tag}", await contexts[0].new_page())
        bob = Person(f"bob-{tag}", await contexts[1].new_page())
        await alice.sign_in(base)
        await bob.sign_in(base)

        # alice creates a room with bob and says hello.
        page = alice.page
        await alice.create_room(lunch, bob.name)
        await expect(page.locator("#room-members")).to_have_text(f"Members: {alice.name} (owner), {bob.name}")
        await alice.say("hi bob")
        await expect(alice.message("hi bob")).to_have_count(1)

        # bob sees the room arrive live, with an unread badge; opening it reads it.
        await expect(bob.room(lunch).locator(".badge")).to_have_text("1 unread")
        await expect(bob.room(lunch).locator(".preview")).to_have_text(f"{alice.name}: hi bob")
        await bob.room(lunch).get_by_role("button").click()
        await expect(bob.message("hi bob")).to_be_visible()
        await expect(bob.room(lunch).locator(".badge")).to_be_hidden()
        await bob.say("hi alice, lunch at noon?")
        await expect(alice.message("hi alice, lunch at noon?")).to_be_visible()

        # alice edits and deletes her own messages; bob sees both live.
        await alice.say("noon works")
        await alice.say("oops, wrong room")
        mine = alice.message("noon works")
        await mine.get_by_role("button", name="Edit").click()
        await page.get_by_label("Edit message").fill("noon works, see you there")
        await page.get_by_label("Edit message").press("Enter")
        await expect(bob.message("noon works, see you there").locator(".edited")).to_have_text("(edited)")
        await alice.message("oops, wrong room").get_by_role("button", name="Delete").click()
        await expect(bob.message("Message deleted")).to_have_count(1)
        await expect(bob.page.get_by_text("oops, wrong room")).to_have_count(0)

        # A second room with more history than one page, written through the API.
        alice_http = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {await alice.token()}"}, timeout=20
        )
        async with alice_http:
            created = await alice_http.post("/v1/rooms", json={"name": history, "members": [bob.name]})
            assert created.status_code == 201, created.text
            room_id = created.json()["id"]
            for i in range(1, 61):
                sent = await alice_http.post(
                    f"/v1/rooms/{room_id}/messages",
                    json={"body": f"history {i:02d}"},
                    headers={"Idempotency-Key": f"h{tag}{i}"},
                )
                assert sent.status_code == 201, sent.text
        await expect(bob.room(history).locator(".badge")).to_have_text("60 unread")

        # bob reloads: signed in still, the open room and its history are there.
        await bob.page.reload()
        await expect(bob.page.locator("#connection")).to_have_text("Live")
        await expect(bob.page.locator("#room-title")).to_have_text(lunch)
        await expect(bob.message("noon works, see you there")).to_be_visible()
        await expect(bob.message("hi bob")).to_be_visible()
        await expect(bob.room(history).locator(".badge")).to_have_text("60 unread")

        # The newest page first; older ones as bob scrolls up (keyset: before the oldest seq shown).
        await bob.room(history).get_by_role("button").click()
        await expect(bob.message("history 60")).to_be_visible()
        await expect(bob.page.locator("#messages li.message")).to_have_count(50)
        await expect(bob.message("history 01")).to_have_count(0)
        await bob.page.locator("#timeline").evaluate("el => { el.scrollTop = 0; }")
        await expect(bob.message("history 01")).to_have_count(1)
        await expect(bob.page.locator("#messages li.message")).to_have_count(60)
        await expect(bob.page.locator("#history-start")).to_be_visible()
        await expect(bob.room(history).locator(".badge")).to_be_hidden()

        # A phone's width: one column, no sideways scrolling, a way back to the room list.
        await bob.page.set_viewport_size({"width": 390, "height": 720})
        assert await bob.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await expect(bob.page.locator("#room-list")).to_be_hidden()
        await bob.page.get_by_role("button", name="← Rooms").click()
        await expect(bob.page.locator("#room-list")).to_be_visible()
        await bob.room(lunch).get_by_role("button").click()
        await expect(bob.message("hi bob")).to_be_visible()
        await bob.page.screenshot(path=str(ARTIFACTS / "web-client-phone.png"))
        await bob.page.set_viewport_size({"width": 760, "height": 720})

        # The server restarts while both pages are open. Meanwhile alice's page sends (it retries
        # with the same Idempotency-Key) and another replica takes a message from the API.
        await server.stop()
        await expect(bob.page.locator("#connection")).to_have_text("Reconnecting…")
        await expect(alice.page.locator("#connection")).to_have_text("Reconnecting…")
        await alice.say("sent while the server was down")
        pending = alice.page.locator("#messages li.pending")
        await expect(pending.locator(".status")).to_have_text("Not sent yet: retrying…")
        await alice.page.screenshot(path=str(ARTIFACTS / "web-client-reconnecting.png"))
        async with serve(settings, create_app(settings)) as replica:
            token = mint_token(TEST_SECRET, alice.name, 600)
            async with httpx.AsyncClient(base_url=replica.url, timeout=20) as other:
                rooms = (await other.get("/v1/rooms", headers={"Authorization": f"Bearer {token}"})).json()
                lunch_id = next(r["id"] for r in rooms["items"] if r["name"] == lunch)
                r = await other.post(
                    f"/v1/rooms/{lunch_id}/messages",
                    json={"body": "sent through another replica"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 201, r.text
        restarted = StreamResumes(create_dev_app(settings))
        server = await stack.enter_async_context(serve(settings, restarted, port))  # type: ignore[arg-type]

        for person in (bob, alice):
            await expect(person.page.locator("#connection")).to_have_text("Live")
            await expect(person.message("sent through another replica")).to_have_count(1)
            await expect(person.message("sent while the server was down")).to_have_count(1)
        await expect(pending).to_have_count(0)
        await bob.say("back online")
        await expect(alice.message("back online")).to_be_visible()
        await expect(alice.room(lunch).locator(".badge")).to_be_hidden()  # read as it arrived
        await expect(bob.room(lunch).locator(".badge")).to_be_hidden()
        async with httpx.AsyncClient(base_url=base, timeout=20) as http:
            r = await http.post(
                f"/v1/rooms/{room_id}/messages",
                json={"body": "one more for the badge"},
                headers={"Authorization": f"Bearer {await alice.token()}"},
            )
            assert r.status_code == 201, r.text
        await expect(bob.room(history).locator(".badge")).to_have_text("1 unread")

        # Tokens never travel in URLs (the stream is authenticated by its HttpOnly cookie).
        for person in (alice, bob):
            token = await person.token()
            assert token and all(token not in url for url in person.urls)
            streams = [url for url in person.urls if "/v1/events" in url]
            assert streams and all("session=" in url for url in streams), streams
            assert not person.problems, person.problems
        # Both pages resumed from where they were: the browser's own reconnect sends Last-Event-ID
        # (a page that has had no event since it opened its stream resumes from the URL's cursor).
        assert len(restarted.resumes) >= 2 and all(any(r) for r in restarted.resumes), restarted.resumes
        assert any(header for header, _ in restarted.resumes), restarted.resumes
        cookies = await contexts[1].cookies()
        assert [(c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
            (True, "Strict", "/v1/events")
        ]

        await save_side_by_side(alice, bob)
    assert time.monotonic() - started < 120


async def test_reactions_threads_search_direct_messages_topic_mentions_and_typing_in_real_browsers(
    browser: Any, database_url: str
) -> None:
    """Each feature of SPEC §8 in the page, between alice and bob, ending in one screenshot that
    shows them all (test-artifacts/chat-features.png)."""
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    started = time.monotonic()
    ARTIFACTS.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    settings = make_settings(database_url)
    lunch, crew, planning, archive = f"Lunch {tag}", f"Lunch crew {tag}", f"Planning {tag}", f"Archive {tag}"
    topic = "Tacos on Friday at noon, bring your own salsa"
    root = "Tacos on Friday, who is in?"

    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve(settings, create_dev_app(settings)))
        contexts = [await browser.new_context(viewport={"width": 1280, "height": 860}) for _ in range(2)]
        for context in contexts:
            stack.push_async_callback(context.close)
        alice = Person(f"alice-{tag}", await contexts[0].new_page())
        bob = Person(f"bob-{tag}", await contexts[1].new_page())
        await alice.sign_in(server.url)
        await bob.sign_in(server.url)

        # Room details: the owner renames the room and sets its topic; bob sees both live, and has
        # no way to change them (not the owner).
        await alice.create_room(lunch, bob.name)
        await alice.say(root)
        await expect(alice.message(root)).to_have_count(1)
        await alice.page.get_by_role("button", name="Edit name and topic").click()
        await alice.page.get_by_label("Name", exact=True).fill(crew)
        await alice.page.get_by_label("Topic", exact=True).fill(topic)
        await alice.page.get_by_role("button", name="Save", exact=True).click()
        await expect(alice.page.locator("#room-title")).to_have_text(crew)
        await expect(alice.page.locator("#room-topic")).to_have_text(topic)
        await expect(bob.room(crew)).to_have_count(1)  # room.updated, live
        await expect(bob.room(lunch)).to_have_count(0)
        await bob.room(crew).get_by_role("button").click()
        await expect(bob.page.locator("#room-title")).to_have_text(crew)
        await expect(bob.page.locator("#room-topic")).to_have_text(topic)
        await expect(bob.page.get_by_role("button", name="Edit name and topic")).to_be_hidden()

        # Reactions: a quick emoji adds one; the other side sees the count, each side highlights its
        # own; clicking your own takes it back.
        def chip(person: Person, emoji: str, text: str = root) -> Any:
            return person.message(text).locator(f'.reaction:not(.add)[data-emoji="{emoji}"]')

        await bob.message(root).get_by_role("button", name="React with 👍").click()
        await expect(chip(bob, "👍")).to_have_text("👍 1")
        await expect(chip(bob, "👍")).to_have_attribute("aria-pressed", "true")
        await expect(chip(alice, "👍")).to_have_text("👍 1")
        await expect(chip(alice, "👍")).to_have_attribute("aria-pressed", "false")
        await chip(alice, "👍").click()  # alice too
        for person in (alice, bob):
            await expect(chip(person, "👍")).to_have_text("👍 2")
            await expect(chip(person, "👍")).to_have_attribute("aria-pressed", "true")
        await bob.message(root).get_by_role("button", name="React with 🎉").click()
        await expect(chip(alice, "🎉")).to_have_text("🎉 1")
        await chip(bob, "🎉").click()  # taken back
        await expect(chip(alice, "🎉")).to_have_count(0)
        await expect(chip(bob, "🎉")).to_have_count(0)
        await bob.message(root).get_by_role("button", name="React with 🎉").click()
        await expect(chip(alice, "🎉")).to_have_text("🎉 1")

        # Mentions: highlighted in the body; in a room bob has not read, a mention badge beside the
        # unread badge, live and again from the room list after a reload.
        salsa = f"@{bob.name} can you bring the salsa?"
        await alice.say(salsa)
        await expect(bob.message(salsa).locator(".mention.me")).to_have_text(f"@{bob.name}")
        await expect(alice.message(salsa).locator(".mention")).to_have_text(f"@{bob.name}")
        await bob.message(salsa).get_by_role("button", name="React with ❤️").click()  # two code points
        await expect(chip(alice, "❤️", salsa)).to_have_text("❤️ 1")
        alice_http = httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {await alice.token()}"}, timeout=20
        )
        stack.push_async_callback(alice_http.aclose)
        created = await alice_http.post("/v1/rooms", json={"name": planning, "members": [bob.name]})
        assert created.status_code == 201, created.text
        planning_id = created.json()["id"]
        sent = await alice_http.post(
            f"/v1/rooms/{planning_id}/messages", json={"body": f"@{bob.name} please look at the budget"}
        )
        assert sent.status_code == 201, sent.text
        assert sent.json()["mentions"] == [bob.name], sent.text
        await expect(bob.room(planning).locator(".mention-badge")).to_have_text("@1 mention")
        await expect(bob.room(planning).locator(".badge")).to_have_text("1 unread")
        await bob.page.reload()
        await expect(bob.page.locator("#connection")).to_have_text("Live")
        await expect(bob.room(planning).locator(".mention-badge")).to_have_text("@1 mention")
        await expect(bob.room(crew).locator(".mention-badge")).to_be_hidden()  # read
        await expect(chip(bob, "👍")).to_have_attribute("aria-pressed", "true")  # from history

        # A room with more history than one page, where an early message will be searched for.
        created = await alice_http.post("/v1/rooms", json={"name": archive, "members": [bob.name]})
        assert created.status_code == 201, created.text
        archive_id = created.json()["id"]
        for i in range(1, 61):
            body = "the old tacos recipe" if i == 2 else f"archive {i:02d}"
            sent = await alice_http.post(f"/v1/rooms/{archive_id}/messages", json={"body": body})
            assert sent.status_code == 201, sent.text

        # Direct messages: bob starts one with alice; both list it apart from the rooms, by the
        # other person's name.
        await bob.page.get_by_text("New direct message", exact=True).click()
        await bob.page.get_by_label("User id", exact=True).fill(alice.name)
        await bob.page.get_by_role("button", name="Message", exact=True).click()
        await expect(bob.page.locator("#room-title")).to_have_text(alice.name)
        await expect(bob.page.locator("#room-members")).to_have_text(f"Direct message with {alice.name}")
        await expect(bob.direct(alice.name)).to_have_count(1)
        await expect(bob.room(alice.name)).to_have_count(0)
        await bob.say("psst: the tacos are on me")
        await expect(alice.direct(bob.name).locator(".badge")).to_have_text("1 unread")
        await expect(alice.room(bob.name)).to_have_count(0)

        # Search: results from every room of bob's, newest first; a result opens its room at the
        # message, loading older history until it is there.
        await bob.page.get_by_label("Search messages").fill("tacos")
        await bob.page.get_by_label("Search messages").press("Enter")
        hits = bob.page.locator("#search-list .search-hit")
        await expect(hits.locator(".hit-body")).to_have_text(
            ["psst: the tacos are on me", "the old tacos recipe", root]
        )
        await expect(hits.locator(".hit-where")).to_have_text([alice.name, archive, crew])
        await hits.nth(1).click()
        await expect(bob.page.locator("#room-title")).to_have_text(archive)
        await expect(bob.message("the old tacos recipe")).to_have_class(re.compile(r"\bfound\b"))
        await expect(bob.message("the old tacos recipe")).to_be_in_viewport()
        await expect(bob.page.locator("#messages li.message")).to_have_count(60)  # an older page was loaded
        await hits.nth(2).click()
        await expect(bob.page.locator("#room-title")).to_have_text(crew)
        await expect(bob.message(root)).to_have_class(re.compile(r"\bfound\b"))
        # What bob saw of the archive on the way is read, though he left it at once.
        await expect(bob.room(archive).locator(".badge")).not_to_have_text("60 unread")

        # Threads: bob replies in the root's thread; alice's root counts the reply live, she opens
        # the thread and answers; bob's pane shows it live, and the root counts both.
        await bob.message(root).get_by_role("button", name="Reply in a thread").click()
        await expect(bob.page.locator("#thread-root .body")).to_have_text(root)
        await bob.page.get_by_label("Reply in thread", exact=True).fill("count me in")
        await bob.page.get_by_label("Reply in thread", exact=True).press("Enter")
        await expect(bob.page.locator("#thread-replies .body")).to_have_text(["count me in"])
        await expect(alice.message(root).locator(".thread-link")).to_have_text("1 reply")
        await alice.message(root).locator(".thread-link").click()
        await expect(alice.page.locator("#thread-replies .body")).to_have_text(["count me in"])
        await alice.page.get_by_label("Reply in thread", exact=True).fill("great, see you there")
        await alice.page.get_by_label("Reply in thread", exact=True).press("Enter")
        await expect(bob.page.locator("#thread-replies .body")).to_have_text(
            ["count me in", "great, see you there"]
        )
        await expect(bob.page.locator("#thread-count")).to_have_text("2 replies")
        await expect(bob.message(root).locator(".thread-link")).to_have_text("2 replies")
        await expect(alice.message(root).locator(".thread-link")).to_have_text("2 replies")
        await expect(bob.message("great, see you there").locator(".in-thread")).to_be_visible()

        # Typing: alice types in the room (after the server's 2 s window since her last typing
        # call); bob sees it, and it ends when her message arrives.
        composer = alice.page.get_by_label("Message", exact=True)
        typing = bob.page.locator("#typing")
        for attempt in range(3):
            await asyncio.sleep(2.1)
            await composer.press_sequentially("on my way" if attempt == 0 else ".", delay=40)
            await expect(typing).to_have_text(f"{alice.name} is typing…")

            # Everything in one view: reactions, the thread pane, search results, the direct
            # messages, the topic, a highlighted mention with its badge, and the typing line (a
            # slow shot that outlives the 5 s of "is typing…" is taken again).
            await bob.page.screenshot(path=str(ARTIFACTS / "chat-features.png"))
            if await typing.text_content() == f"{alice.name} is typing…":
                break
        else:
            raise AssertionError("the typing line ended before every screenshot")
        await composer.press("Enter")
        await expect(bob.page.locator("#messages .body", has_text="on my way")).to_be_visible()
        await expect(typing).to_have_text("")

        # A phone's width: the thread takes the whole screen, and closing it shows the room again.
        await bob.page.set_viewport_size({"width": 390, "height": 720})
        assert await bob.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await expect(bob.page.locator("#thread-replies .body")).to_have_count(2)
        await expect(bob.page.locator("#timeline")).to_be_hidden()
        await expect(bob.page.locator("#room-list")).to_be_hidden()
        await bob.page.get_by_role("button", name="Close the thread").click()
        await expect(bob.page.locator("#thread")).to_be_hidden()
        await expect(bob.message(salsa)).to_be_visible()

        for person in (alice, bob):
            assert not person.problems, person.problems
    assert time.monotonic() - started < 120


class StreamResumes:
    """The app, noting where every /v1/events request it gets resumes from."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state
        self.resumes: list[tuple[str | None, str | None]] = []  # (Last-Event-ID, ?cursor=)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/events":
            query = urllib.parse.parse_qs(scope["query_string"].decode())
            self.resumes.append((Headers(scope=scope).get("last-event-id"), query.get("cursor", [None])[0]))
        await self.app(scope, receive, send)


async def save_side_by_side(*people: Person) -> None:
    """test-artifacts/web-client.png: the pages next to each other (or one file each without Pillow)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shots: list[Path] = []
    for person in people:
        path = ARTIFACTS / f"web-client-{person.name.split('-')[0]}.png"
        await person.page.screenshot(path=str(path))
        shots.append(path)
    try:
        from PIL import Image
    except ImportError:
        return
    images = [Image.open(path) for path in shots]
    gap = 16
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    combined = Image.new("RGB", (width, max(image.height for image in images)), "#808080")
    x = 0
    for image in images:
        combined.paste(image, (x, 0))
        x += image.width + gap
    combined.save(ARTIFACTS / "web-client.png")


async def test_the_page_renews_its_token_and_stream_cookie_without_losing_an_event(
    browser: Any, database_url: str, monkeypatch: Any
) -> None:
    """Security review findings 1 and 4: streams end when their credential does (`event: reauth`), and
    the stream cookie lives minutes. The page renews its token (POST /dev/token here) and its cookie
    before they run out, or at once on `event: reauth` (here also from a revocation), and resumes from
    its last id: every message arrives exactly once."""
    from playwright.async_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    monkeypatch.setattr(chat_api.web.dev, "DEV_TOKEN_TTL", 6)
    monkeypatch.setattr(streamcookie, "CREDENTIAL_SECONDS", 3)
    settings = make_settings(database_url, stream_heartbeat_seconds=0.3)
    tag = uuid.uuid4().hex[:6]
    app = StreamResumes(create_dev_app(settings))
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(serve(settings, app))  # type: ignore[arg-type]
        context = await browser.new_context(viewport={"width": 760, "height": 720})
        stack.push_async_callback(context.close)
        bob = Person(f"bob-{tag}", await context.new_page())
        await bob.sign_in(server.url)
        first_token = await bob.token()
        alice = f"alice-{tag}"
        headers = {"Authorization": f"Bearer {mint_token(TEST_SECRET, alice, 600)}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
            created = await http.post("/v1/rooms", json={"name": f"Ticks {tag}", "members": [bob.name]})
            assert created.status_code == 201, created.text
            room_id = created.json()["id"]
            await bob.room(f"Ticks {tag}").get_by_role("button").click()
            started = time.monotonic()
            ticks = 0
            while time.monotonic() - started < 14:  # several credentials and tokens long
                ticks += 1
                sent = await http.post(f"/v1/rooms/{room_id}/messages", json={"body": f"tick {ticks}"})
                assert sent.status_code == 201, sent.text
                if ticks == 10:
                    assert (
                        app.state.resources.hub.revoke(bob.name) == 1
                    )  # what `chat-api revoke-streams` does
                await asyncio.sleep(0.4)
        for i in range(1, ticks + 1):
            await expect(bob.message(f"tick {i}")).to_have_count(1)
        await expect(bob.page.locator("#messages li.message")).to_have_count(ticks)
        await expect(bob.page.locator("#connection")).to_have_text("Live")
        await expect(bob.page.locator("#sign-in")).to_be_hidden()

        assert await bob.token() != first_token, "the page renewed its token"
        assert sum(url.endswith("/dev/token") for url in bob.urls) >= 3
        opened = [url for url in bob.urls if "/v1/events" in url]
        assert len(opened) >= 5, opened  # a new stream per credential
        assert all(any(resume) for resume in app.resumes), app.resumes  # each from its cursor
        cookies = await context.cookies()
        assert [(c["httpOnly"], c["sameSite"], c["path"], c["expires"]) for c in cookies] == [
            (True, "Strict", "/v1/events", -1)  # a session cookie
        ], cookies
        assert not bob.problems, bob.problems

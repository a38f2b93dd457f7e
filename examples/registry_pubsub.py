"""A local pub/sub and process names, both on otpy.Registry.

    python examples/registry_pubsub.py

Two registries run under one supervisor:

- ``"pubsub"`` has duplicate keys: every subscriber registers itself under the topics
  it wants, and a publisher broadcasts with ``Registry.dispatch``;
- ``"rooms"`` has unique keys: chat rooms are named ``Registry.via("rooms", name)``, so
  they are found by name without a global name per room.

A subscriber that exits disappears from the topics it had subscribed to.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
import trio

import otpy


class Subscriber(otpy.GenServer):
    """Subscribes to some topics in init and prints what it receives."""

    async def init(self, who: str, topics: list[str]) -> None:
        self.who = who
        self.received = 0
        for topic in topics:
            otpy.Registry.register("pubsub", topic, who)  # the value: who we are

    async def handle_info(self, message: Any) -> None:
        match message:
            case ("broadcast", topic, text):
                self.received += 1
                print(f"  {self.who} got [{topic}] {text}")

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        return self.received


def publish(topic: str, text: str) -> None:
    """Send ("broadcast", topic, text) to every subscriber of topic; the caller does the sending."""

    def broadcast(entries: list[tuple[otpy.Pid, Any]]) -> None:
        for pid, _name in entries:
            otpy.send(pid, ("broadcast", topic, text))

    otpy.Registry.dispatch("pubsub", topic, broadcast)


class Room(otpy.GenServer):
    """A chat room that counts its members."""

    async def init(self, title: str) -> None:
        self.title = title
        self.members: list[str] = []

    async def handle_call(self, request: Any, from_: otpy.From) -> Any:
        match request:
            case ("join", who):
                self.members.append(who)
        return list(self.members)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        registries = [
            otpy.Registry.child_spec(keys="duplicate", name="pubsub"),
            otpy.Registry.child_spec(keys="unique", name="rooms"),
        ]
        sup = await otpy.Supervisor.start_link(registries, nursery=nursery)

        alice = await Subscriber.start_link("alice", ["news", "sport"], nursery=nursery)
        await Subscriber.start_link("bob", ["news"], nursery=nursery)
        carol = await Subscriber.start_link("carol", ["sport"], nursery=nursery)

        print("subscribers of news:", sorted(name for _, name in otpy.Registry.lookup("pubsub", "news")))
        print("publishing to news and sport:")
        publish("news", "otpy has a Registry")
        publish("sport", "trio wins again")
        await otpy.call(alice, "received")  # let the messages be handled

        await otpy.stop(carol)
        print("after carol left, subscribers of sport:", [name for _, name in otpy.Registry.lookup("pubsub", "sport")])
        print("entries in pubsub:", otpy.Registry.count("pubsub"))

        for title in ("lobby", "python"):
            await Room.start_link(title, name=otpy.Registry.via("rooms", title), nursery=nursery)
        await otpy.call(otpy.Registry.via("rooms", "lobby"), ("join", "alice"))
        members = await otpy.call(otpy.Registry.via("rooms", "lobby"), ("join", "bob"))
        print("lobby members:", members)
        try:
            await Room.start_link("again", name=otpy.Registry.via("rooms", "lobby"), nursery=nursery)
        except otpy.AlreadyRegistered as exc:
            print(f"a second lobby was refused: {exc.pid!r} holds it")

        await otpy.stop(sup)
        nursery.cancel_scope.cancel()
    print("done")


if __name__ == "__main__":
    # An application configures structlog; otpy never does. Show errors only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    trio.run(main)

"""A matrix-nio bot for the black-box tests (tests/it/nio.rs).

It logs in with its own Olm/Megolm store (matrix-nio's end-to-end encryption), joins an
encrypted room it was invited to, sends one encrypted message and waits until it has
decrypted an expected message from someone else (with --reply, the other way round). It
reports each step on stdout, one line each, for the Rust test to follow:

    READY <device_id>      logged in, keys uploaded
    JOINED                 in the room, which nio sees as encrypted
    SENT <event_id>        the encrypted message is sent
    RECEIVED <sender>      the expected plaintext was decrypted

Every wait is bounded: after --timeout seconds the bot exits with status 1 and a reason on
stderr. Only the server under test (on 127.0.0.1) is contacted.
"""

import argparse
import asyncio
import logging
import sys
import time

from nio import (
    AsyncClient,
    AsyncClientConfig,
    EncryptionError,
    JoinError,
    LoginError,
    MegolmEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncError,
)


class Failure(Exception):
    pass


def say(line):
    print(line, flush=True)


async def sync(client, deadline):
    if time.monotonic() > deadline:
        raise Failure("timed out")
    response = await client.sync(timeout=500, full_state=client.next_batch is None)
    if isinstance(response, SyncError):
        raise Failure(f"sync failed: {response}")
    return response


async def send(client, args):
    if args.send is None:
        return
    # Tracked users' device lists are fetched before encrypting; an empty device list
    # here is the bug this test guards against (nio's store kept no device when the
    # server sent `"device_display_name": null`).
    if client.should_query_keys:
        await client.keys_query()
    for member in client.rooms[args.room].users:
        if member != client.user_id and not client.device_store.active_user_devices(member):
            raise Failure(f"nio knows no device of {member} after keys/query")
    response = await client.room_send(
        args.room,
        "m.room.message",
        {"msgtype": "m.text", "body": args.send},
        ignore_unverified_devices=True,
    )
    if not isinstance(response, RoomSendResponse):
        raise Failure(f"send failed: {response}")
    say(f"SENT {response.event_id}")


async def expect(client, args, deadline):
    if args.expect is None:
        return
    # Events nio could not decrypt yet: their room key may arrive in a later sync.
    pending = []
    while True:
        response = await sync(client, deadline)
        room = response.rooms.join.get(args.room)
        events = pending + (room.timeline.events if room else [])
        pending = []
        for event in events:
            if isinstance(event, MegolmEvent):
                try:
                    event = client.decrypt_event(event)
                except EncryptionError as error:
                    print(f"not decrypted yet: {event.event_id}: {error}", file=sys.stderr)
                    pending.append(event)
                    continue
            if isinstance(event, RoomMessageText) and event.body == args.expect:
                if not event.decrypted:
                    raise Failure(f"{args.expect!r} arrived unencrypted")
                say(f"RECEIVED {event.sender}")
                return


async def run(args):
    deadline = time.monotonic() + args.timeout
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = AsyncClient(args.homeserver, args.user, store_path=args.store, config=config)
    try:
        response = await client.login(args.password, device_name="nio bot")
        if isinstance(response, LoginError):
            raise Failure(f"login failed: {response}")
        if not client.olm:
            raise Failure("matrix-nio has no encryption support (vodozemac missing?)")
        if client.should_upload_keys:
            await client.keys_upload()
        say(f"READY {client.device_id}")

        # Wait for the invite and join (unless this user is in the room already), and
        # wait until nio knows the room is encrypted.
        while args.room not in client.invited_rooms and args.room not in client.rooms:
            await sync(client, deadline)
        if args.room not in client.rooms:
            response = await client.join(args.room)
            if isinstance(response, JoinError):
                raise Failure(f"join failed: {response}")
        while args.room not in client.rooms or not client.rooms[args.room].encrypted:
            await sync(client, deadline)
        say("JOINED")

        if args.reply:
            await expect(client, args, deadline)
            await send(client, args)
        else:
            await send(client, args)
            await expect(client, args, deadline)
    finally:
        await client.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--store", required=True, help="directory for nio's Olm store")
    parser.add_argument("--room", required=True)
    parser.add_argument("--send", help="plaintext to send encrypted")
    parser.add_argument("--expect", help="plaintext to wait for, decrypted")
    parser.add_argument(
        "--reply", action="store_true", help="wait for --expect first, then --send"
    )
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(run(args))
    except Failure as failure:
        print(f"bot: {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

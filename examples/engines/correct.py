#!/usr/bin/env python3
"""A correct external migration engine for `keyshift gate --engine`.

Usage: python3 examples/engines/correct.py [migrate|rollback]

Reads REDIS_URL, KEYSHIFT_MIGRATION (grid-positions | order-placed) and
KEYSHIFT_EXCHANGES (space-separated; default: okx binance bitget upbit
bybit), as docs/engines.md describes, and does what DESIGN §2 says. It
shares no code with keyshift: it exists to show that the gate judges any
engine by what it leaves in Redis, and as a starting point for writing one.

It keeps no journal: any key it wrote outside the migration's own patterns
would fail the gate's `untouched` invariant. Rollback therefore works from
what is in Redis (the newest backup stamp, the index sets), see `rollback_grid`.

Exit codes (DESIGN §6): 0 done; 2 usage; 3 done but keys were quarantined
or in conflict (listed on stderr); 4 Redis unreachable or a command failed.
"""

import json
import os
import re
import sys
import time

import redis

DEFAULT_EXCHANGES = "okx binance bitget upbit bybit"
BACKUP_TTL_S = 7 * 24 * 3600
META_AT, META_FROM = "migrated_at", "migrated_from"
SCAN_COUNT = 1000
# A user whose legacy key keeps changing under a writer is retried this many
# times, then reported as a conflict (exit 3) rather than spun on forever.
MAX_ATTEMPTS = 20
EXIT_OK, EXIT_USAGE, EXIT_REVIEW, EXIT_REDIS = 0, 2, 3, 4


class Quarantine(Exception):
    """A legacy value this engine does not fully understand: leave it be."""


# --- Reading JSON without losing its text ---------------------------------
#
# Python's json turns `3.50` into 3.5 and `1e5` into 100000.0; DESIGN §2 wants
# every non-string value copied as compact JSON text "as written". So values
# are located with the stdlib decoder (which also validates them) and copied
# from the source text; only member names and string values are decoded.
# parse_int/parse_float return the text unchanged (no float, and no
# int-digit limit on huge integers); NaN/Infinity are not JSON.


def _not_json_constant(name):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    parse_int=str, parse_float=str, parse_constant=_not_json_constant, strict=True
)
_WS = " \t\n\r"  # JSON's whitespace, nothing else (a BOM is not JSON)
# A string literal, or a run of whitespace outside one.
_COMPACT = re.compile(r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+', re.S)


def _skip_ws(text, i):
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _value_at(text, i):
    """(decoded value, end) of the JSON value starting at text[i]."""
    try:
        return _DECODER.raw_decode(text, i)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise Quarantine(f"not JSON ({e})") from None


def _has_lone_surrogate(s):
    # `"\ud800"` decodes in Python but is not a Unicode string (serde_json,
    # keyshift's parser, refuses it) and cannot be written as UTF-8.
    return any("\ud800" <= c <= "\udfff" for c in s)


def _members(text, i, what):
    """[(name, raw value text)] of the object at text[i] == '{', and its end.
    A repeated name (after unescaping) is refused: a hash holds one of them."""
    out, seen = [], set()
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "}":
        return out, i + 1
    while True:
        if text[i : i + 1] != '"':
            raise Quarantine(f"not JSON: {what}: expected a member name at {i}")
        name, i = _value_at(text, i)
        if _has_lone_surrogate(name):
            raise Quarantine(f"{what}: a member name holds a lone surrogate")
        if name in seen:
            raise Quarantine(f"{what} has field {name!r} twice")
        seen.add(name)
        i = _skip_ws(text, i)
        if text[i : i + 1] != ":":
            raise Quarantine(f"not JSON: {what}: expected ':' at {i}")
        start = _skip_ws(text, i + 1)
        _, i = _value_at(text, start)
        out.append((name, text[start:i]))
        i = _skip_ws(text, i)
        sep = text[i : i + 1]
        if sep == "}":
            return out, i + 1
        if sep != ",":
            raise Quarantine(f"not JSON: {what}: expected ',' or '}}' at {i}")
        i = _skip_ws(text, i + 1)


def _elements(text, i):
    """[raw element text] of the array at text[i] == '[', and its end."""
    out = []
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "]":
        return out, i + 1
    while True:
        start = i
        _, i = _value_at(text, start)
        out.append(text[start:i])
        i = _skip_ws(text, i)
        sep = text[i : i + 1]
        if sep == "]":
            return out, i + 1
        if sep != ",":
            raise Quarantine(f"not JSON: expected ',' or ']' at {i}")
        i = _skip_ws(text, i + 1)


def compact_json(raw):
    """Whitespace outside strings removed; key order, number spelling and
    escapes kept as written: `{ "b" : 1, "a" : 3.50 }` -> `{"b":1,"a":3.50}`."""
    return _COMPACT.sub(lambda m: m.group(1) or "", raw)


# --- Planning one legacy value (pure: no Redis) ----------------------------

# Rust's f64 grammar, which keyshift reads `pos` with: no `_` separators and
# no non-ASCII digits (Python's float() takes both).
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf|infinity|nan)", re.A | re.I
)
# Unicode White_Space, what Rust's str::trim strips (str.strip also strips
# U+001C..U+001F, which are not whitespace there).
_TRIM = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)


def parse_number(text):
    """`pos` as a float: OKX sends a decimal string ("-3"), some writers a
    JSON number; None when it is neither (missing, null, "abc", NaN)."""
    t = text.strip(_TRIM)
    if not _NUMBER.fullmatch(t):
        return None
    v = float(t)
    return None if v != v else v


def side_of(pos_side, pos):
    """DESIGN §2: posSide when it is long or short (ASCII, any case); else
    short when pos < 0, else long. In OKX long/short mode a short has a
    positive pos, so the sign alone would be wrong there."""
    if pos_side is not None and pos_side.isascii() and pos_side.lower() in ("long", "short"):
        return pos_side.lower()
    return "short" if pos is not None and pos < 0 else "long"


def plan_position(index, raw):
    """(instId, side, [(field, value)]) of one position object."""
    if not raw.startswith("{"):
        raise Quarantine(f"position #{index} is not an object")
    members, _ = _members(raw, 0, f"position #{index}")
    fields, inst_id, pos_side, pos = [], None, None, None
    for name, value_raw in members:
        if name in (META_AT, META_FROM):
            raise Quarantine(f"position #{index} already has {name!r}, which the migration adds")
        is_string = value_raw.startswith('"')
        if is_string:
            value, _ = _value_at(value_raw, 0)
            if _has_lone_surrogate(value):
                raise Quarantine(f"position #{index}: field {name!r} holds a lone surrogate")
        else:
            value = compact_json(value_raw)
        if name == "instId":
            inst_id = (is_string, value)
        elif name == "posSide" and is_string:
            pos_side = value
        elif name == "pos":
            pos = value
        fields.append((name, value))
    if inst_id is None:
        raise Quarantine(f"position #{index} has no instId")
    is_string, inst = inst_id
    # The instId becomes a key segment: it must be a non-empty string
    # without the ':' separator, or the key could not be read back.
    if not is_string or not inst or ":" in inst:
        raise Quarantine(f"position #{index} has an unusable instId {inst!r}")
    # Closed positions (pos 0) migrate like any other: DESIGN §2 is lossless.
    return inst, side_of(pos_side, None if pos is None else parse_number(pos)), fields


def plan_value(value):
    """The positions one legacy value holds, each (instId, side, fields), or
    Quarantine. An empty array or object holds none."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Quarantine(f"not JSON (invalid UTF-8 at byte {e.start})") from None
    i = _skip_ws(text, 0)
    first = text[i : i + 1]
    if first == "[":
        entries, end = _elements(text, i)
        entries = [(None, raw) for raw in entries]
    elif first == "{":
        entries, end = _members(text, i, "the value")
    else:
        _value_at(text, i)  # not JSON at all, or JSON of the wrong kind?
        raise Quarantine("a JSON scalar, not an array or object of positions")
    if _skip_ws(text, end) != len(text):
        raise Quarantine(f"not JSON: trailing characters at {end}")
    planned, members = [], set()
    for index, (object_key, raw) in enumerate(entries):
        inst, side, fields = plan_position(index, raw)
        if object_key is not None and object_key != inst:
            raise Quarantine(f"object key {object_key!r} is not its position's instId {inst!r}")
        member = f"{inst}:{side}"
        # Which of two colliding positions is "the" position is not ours to pick.
        if member in members:
            raise Quarantine(f"two positions map to {member!r}")
        members.add(member)
        planned.append((inst, side, fields))
    return planned


# --- Key grammar (DESIGN §1; keyshift's engine/src/keys) -------------------


def escape_glob(s):
    """An exchange name that matches only itself in a SCAN MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)


def is_id(s):
    """An id segment: non-empty, without ':' (else the key is ambiguous)."""
    return bool(s) and ":" not in s


_STAMP = re.compile(r"\d{8}_\d{6}", re.A)


def name_of(raw_key):
    """The key as text, or None when its name is not UTF-8."""
    try:
        return raw_key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def scan(r, pattern):
    # SCAN, never KEYS: KEYS blocks the server for the whole keyspace.
    return r.scan_iter(match=pattern, count=SCAN_COUNT)


# --- Running ---------------------------------------------------------------


class Run:
    """What one invocation saw, for the summary line and the exit code."""

    def __init__(self, migration, action):
        self.migration, self.action = migration, action
        self.counts = {}
        self.review = 0  # quarantined or in conflict

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def report(self, key, outcome, why):
        """A key left for review: untouched, and the run exits 3."""
        self.review += 1
        self.count(outcome)
        shown = key.decode("utf-8", "backslashreplace") if isinstance(key, bytes) else key
        print(f"{self.migration}: {outcome}: {shown}: {why}", file=sys.stderr)

    def settle(self, key, outcome, why=None):
        """Counts what one key's step did; reports it when left for review."""
        if outcome in ("quarantined", "conflict"):
            self.report(key, outcome, why)
        else:
            self.count(outcome)

    def finish(self):
        counts = " ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        print(f"{self.migration} {self.action}: {counts or 'nothing to do'}")
        return EXIT_REVIEW if self.review else EXIT_OK


def atomically(r, watch, step):
    """Runs `step(pipe)` under WATCH of `watch` until EXEC goes through: a
    writer that changes a watched key in between makes EXEC fail, and the
    user is read and planned again, so no write of theirs is lost. `step`
    reads with `pipe` (immediate mode), may WATCH more keys, and either
    returns an outcome without calling pipe.multi(), or queues its writes
    after pipe.multi() and returns the outcome to report once they apply."""
    for _ in range(MAX_ATTEMPTS):
        with r.pipeline() as pipe:
            try:
                pipe.watch(*watch)
                outcome = step(pipe)
                if pipe.explicit_transaction:
                    pipe.execute()
                return outcome
            except redis.WatchError:
                continue
    return ("conflict", f"changed under a writer {MAX_ATTEMPTS} times in a row; rerun")


def migrate_grid(r, exchanges, run):
    now = time.time()
    migrated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now))  # one per run
    for ex in exchanges:
        prefix = f"{ex}:positions:"
        for raw_key in scan(r, escape_glob(ex) + ":positions:*"):
            key = name_of(raw_key)
            user = (key or raw_key.decode("utf-8", "replace"))[len(prefix) :]
            if not is_id(user):
                # Backups (`...:backup:...`) and ids holding ':' are not
                # legacy keys: never touched, as keyshift does.
                continue
            if key is None:
                run.report(raw_key, "quarantined", "the key name is not UTF-8; migrate it by hand")
                continue
            step = lambda p: migrate_user(p, key, ex, user, stamp, migrated_at)  # noqa: E731
            outcome, why = atomically(r, [key], step)
            run.settle(key, outcome, why)
            if outcome == "migrated":
                run.count("positions", why)


def migrate_user(pipe, key, ex, user, stamp, migrated_at):
    kind = pipe.type(key).decode()
    if kind == "none":
        return ("vanished", 0)  # expired or deleted since SCAN
    if kind != "string":
        return ("quarantined", f"value is a Redis {kind}, not a string")
    value = pipe.get(key)
    try:
        positions = plan_value(value)
    except Quarantine as q:
        return ("quarantined", str(q))
    index = f"positions:index:{user}:{ex}"
    backup = f"{key}:backup:{stamp}"
    hashes = [
        (f"positions:{user}:{ex}:{inst}:{side}", f"{inst}:{side}", fields)
        for inst, side, fields in positions
    ]
    targets = [backup, index] + [h for h, _, _ in hashes]
    # Never write over a key that is already there: its data is not ours.
    pipe.watch(*targets)
    if pipe.exists(*targets):
        first = next(t for t in targets if pipe.exists(t))
        return ("conflict", f"{first} already exists; nothing was written for this user")
    pttl = pipe.pttl(key)  # > 0: a TTL the new keys carry over
    pipe.multi()
    for hash_key, _, fields in hashes:
        mapping = dict(fields)
        mapping[META_AT], mapping[META_FROM] = migrated_at, key
        pipe.hset(hash_key, mapping=mapping)
        if pttl > 0:
            pipe.pexpire(hash_key, pttl)
    if hashes:
        pipe.sadd(index, *[member for _, member, _ in hashes])
        if pttl > 0:
            pipe.pexpire(index, pttl)
    pipe.set(backup, value, ex=BACKUP_TTL_S)  # byte for byte
    pipe.delete(key)
    return ("migrated", len(hashes))


def parse_backup(key, ex):
    """(user, stamp) of `{ex}:positions:{user}:backup:{YYYYMMDD_HHMMSS}`."""
    prefix = f"{ex}:positions:"
    if key is None or not key.startswith(prefix) or ":backup:" not in key:
        return None
    user, stamp = key[len(prefix) :].rsplit(":backup:", 1)
    return (user, stamp) if is_id(user) and _STAMP.fullmatch(stamp) else None


def rollback_grid(r, exchanges, run):
    """Restores each migrated user's legacy key from that user's newest
    backup (or its backup of KEYSHIFT_BACKUP_STAMP) and deletes exactly the
    keys that user's migration created: the hashes its index lists, and the
    index. A legacy key that exists again (written since, or never
    migrated) is left alone, and so are the backups.

    Which stamps to undo, with no journal: a run killed and run again
    leaves backups under two stamps, one per run, so the newest stamp alone
    does not cover every user. A stamp is undone when it is the newest, or
    when some user backed up under it still has its index (that migration's
    keys are in place). A backup no index vouches for was left by an
    earlier migration, since rolled back or cleaned up, and stays as it is."""
    only = os.environ.get("KEYSHIFT_BACKUP_STAMP") or None
    newest = {}  # (exchange, user) -> that user's newest stamp
    for ex in exchanges:
        for raw_key in scan(r, escape_glob(ex) + ":positions:*:backup:*"):
            parsed = parse_backup(name_of(raw_key), ex)
            if not parsed or (only is not None and parsed[1] != only):
                continue
            user, stamp = parsed
            if stamp > newest.get((ex, user), ""):
                newest[(ex, user)] = stamp
    live = {max(newest.values())} if newest else set()
    for (ex, user), stamp in newest.items():
        if stamp not in live and r.exists(f"positions:index:{user}:{ex}"):
            live.add(stamp)
    for (ex, user), stamp in sorted(newest.items()):
        key, index = f"{ex}:positions:{user}", f"positions:index:{user}:{ex}"
        if stamp not in live or r.exists(key):
            continue
        backup = f"{key}:backup:{stamp}"
        step = lambda p: rollback_user(p, key, backup, index, user, ex)  # noqa: E731
        run.settle(key, *atomically(r, [key, backup, index], step))


def rollback_user(pipe, key, backup, index, user, ex):
    if pipe.exists(key):
        return ("conflict", "the legacy key exists again; restore it by hand if wanted")
    value = pipe.get(backup)
    if value is None:
        return ("vanished", None)
    prefix = f"positions:{user}:{ex}:".encode()
    hashes = [prefix + member for member in pipe.smembers(index)]  # bytes, as stored
    if hashes:
        pipe.watch(*hashes)
    # The legacy TTL was carried over to the index and hashes: what is left
    # of it goes back. (A user with no positions kept no key to carry it.)
    ttls = [t for t in [pipe.pttl(index)] + [pipe.pttl(h) for h in hashes] if t > 0]
    pipe.multi()
    pipe.set(key, value, px=max(ttls) if ttls else None)
    if hashes:
        pipe.delete(*hashes)
    pipe.delete(index)
    return ("restored", None)


def order_placed_parse(key, ex):
    """`{ex}:user:{uid}:symbol:{symbol}:order_placed`, ids without ':'."""
    parts = key.split(":")
    return (
        len(parts) == 6
        and (parts[0], parts[1], parts[3], parts[5]) == (ex, "user", "symbol", "order_placed")
        and all(parts[i] for i in (2, 4))
    )


def migrate_order_placed(r, exchanges, run):
    for ex in exchanges:
        for raw_key in scan(r, escape_glob(ex) + ":user:*:symbol:*:order_placed"):
            key = name_of(raw_key)
            if key is None:
                lossy = raw_key.decode("utf-8", "replace")
                if order_placed_parse(lossy, ex):
                    run.report(raw_key, "quarantined", "the key name is not UTF-8; migrate it by hand")
                continue
            if not order_placed_parse(key, ex):
                continue
            target = "orders:" + key
            step = lambda p: move_order_placed(p, key, target)  # noqa: E731
            run.settle(key, *atomically(r, [key, target], step))


def move_order_placed(pipe, key, target):
    kind = pipe.type(key).decode()
    if kind == "none":
        return ("vanished", None)
    if kind != "hash":
        return ("quarantined", f"value is a Redis {kind}, not a hash")
    target_kind = pipe.type(target).decode()
    if target_kind == "none":
        # RENAME keeps the type, every field and the absolute expiry; the
        # target is watched, so it cannot appear before EXEC.
        pipe.multi()
        pipe.rename(key, target)
        return ("moved", None)
    if target_kind != "hash":
        return ("conflict", f"{target} is a Redis {target_kind}, not a hash")
    if pipe.hgetall(key) != pipe.hgetall(target):
        return ("conflict", f"{target} exists and differs; both left for review")
    pipe.multi()
    pipe.delete(key)
    return ("dropped_equal", None)


def rollback_order_placed(r, exchanges, run):
    """Renames each `orders:` key back to its legacy name where that name is
    free. (Without a journal, an `orders:` key that existed before the
    migration cannot be told from one it created: see docs/engines.md.)"""
    for ex in exchanges:
        for raw_key in scan(r, "orders:" + escape_glob(ex) + ":user:*:symbol:*:order_placed"):
            target = name_of(raw_key)
            if target is None or not order_placed_parse(target[len("orders:") :], ex):
                continue
            key = target[len("orders:") :]
            step = lambda p: rename_back(p, key, target)  # noqa: E731
            run.settle(key, *atomically(r, [key, target], step))


def rename_back(pipe, key, target):
    if pipe.exists(key):
        # Most likely a pair the migration left for review (the target
        # differed): both stay as they are, which is what they were before.
        return ("kept_both", None)
    pipe.multi()
    pipe.rename(target, key)  # the TTL travels with it
    return ("restored", None)


ACTIONS = {
    ("grid-positions", "migrate"): migrate_grid,
    ("grid-positions", "rollback"): rollback_grid,
    ("order-placed", "migrate"): migrate_order_placed,
    ("order-placed", "rollback"): rollback_order_placed,
}


def main(argv, actions=ACTIONS):
    action = argv[1] if len(argv) > 1 else "migrate"
    migration = os.environ.get("KEYSHIFT_MIGRATION", "")
    url = os.environ.get("REDIS_URL", "")
    exchanges = os.environ.get("KEYSHIFT_EXCHANGES", DEFAULT_EXCHANGES).split()
    if len(argv) > 2 or (migration, action) not in actions or not url:
        usage = "REDIS_URL=... KEYSHIFT_MIGRATION=grid-positions|order-placed"
        print(f"usage: {usage} {argv[0]} [migrate|rollback]", file=sys.stderr)
        return EXIT_USAGE
    run = Run(migration, action)
    try:
        r = redis.Redis.from_url(url)  # bytes in, bytes out: values stay exact
        actions[(migration, action)](r, exchanges, run)
    except redis.RedisError as e:
        print(f"{migration}: Redis failed: {e}", file=sys.stderr)
        return EXIT_REDIS
    return run.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv))

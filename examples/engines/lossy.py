#!/usr/bin/env python3
"""A plausible but lossy external engine, for `keyshift gate --engine`.

Usage: python3 examples/engines/lossy.py [migrate|rollback]   (env as correct.py)

It looks like a migration someone would write in an afternoon from the
guide, and it runs clean: it exits 0, writes a hash per position, an index
and a byte-exact backup per user, and deletes the legacy keys. It is wrong
in the ways such scripts usually are; each planted bug is marked `BUG:`
below. The gate must fail it on its invariants (fields, index, counts)
rather than on a crash, which is why it quarantines what it cannot parse
instead of dying on it.

Only `grid-positions` migrate is lossy. Its rollback and both directions of
`order-placed` are correct.py's, so every failure the gate reports points
at one of the bugs below.
"""

import json
import os
import sys
import time

sys.dont_write_bytecode = True  # importing correct.py leaves no __pycache__ behind
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import correct  # noqa: E402

# BUG (fixed field list): only the fields the author's dashboard reads are
# copied; posId, mgnMode, markPx, liqPx, closeOrderAlgo... are dropped.
FIELDS = ("instId", "posSide", "pos", "avgPx", "upl", "feeRate")


def as_text(value):
    """A field's value as hash text."""
    if isinstance(value, str):
        return value
    # BUG (numbers through float): json.loads already turned `3.50` into 3.5
    # and `2.5e-5` into 2.5e-05; json.dumps prints the float, not the text
    # that was stored.
    return json.dumps(value, separators=(",", ":"))


def pos_number(position):
    try:
        return float(position.get("pos") or 0)
    except (TypeError, ValueError):
        return 0.0


def migrate_grid(r, exchanges, run):
    now = time.time()
    migrated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(now))
    for ex in exchanges:
        prefix = f"{ex}:positions:"
        for raw_key in r.scan_iter(match=correct.escape_glob(ex) + ":positions:*", count=1000):
            key = raw_key.decode("utf-8", "replace")
            user = key[len(prefix) :]
            if not correct.is_id(user):
                continue  # backups and ids holding ':' are not legacy keys
            if r.type(raw_key) != b"string":
                run.report(key, "quarantined", "not a string")
                continue
            # BUG (no WATCH): a writer that updates the legacy key between
            # this GET and the DEL below loses its update.
            value = r.get(raw_key)
            try:
                data = json.loads(value)
                positions = list(data.values()) if isinstance(data, dict) else data
                if not isinstance(positions, list):
                    raise ValueError("not an array or object")
                for p in positions:
                    if not isinstance(p, dict) or not isinstance(p.get("instId"), str):
                        raise ValueError("a position without instId")
            except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
                run.report(key, "quarantined", f"cannot parse: {e}")
                continue
            pttl = r.pttl(raw_key)
            index = f"positions:index:{user}:{ex}"
            tx = r.pipeline()
            written = 0
            for p in positions:
                pos = pos_number(p)
                if pos == 0:
                    # BUG (closed skipped silently): the guide said "skip
                    # closed positions", so they vanish; nothing counts them
                    # and the legacy key holding them is deleted below.
                    continue
                # BUG (side from the sign): posSide is ignored. In OKX
                # long/short mode a short has a positive pos, so shorts land
                # under :long, and a hedged pair overwrites one hash.
                side = "short" if pos < 0 else "long"
                fields = {f: as_text(p[f]) for f in FIELDS if f in p}
                fields.update(migrated_at=migrated_at, migrated_from=key)
                hash_key = f"positions:{user}:{ex}:{p['instId']}:{side}"
                tx.hset(hash_key, mapping=fields)  # BUG: overwrites whatever is there
                tx.sadd(index, f"{p['instId']}:{side}")
                if pttl > 0:
                    tx.pexpire(hash_key, pttl)
                    tx.pexpire(index, pttl)
                written += 1
            tx.set(f"{key}:backup:{stamp}", value, ex=correct.BACKUP_TTL_S)
            tx.delete(raw_key)
            tx.execute()
            run.count("migrated")
            run.count("positions", written)


def main(argv):
    actions = dict(correct.ACTIONS)
    actions[("grid-positions", "migrate")] = migrate_grid
    return correct.main(argv, actions)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
